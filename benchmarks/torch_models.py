"""The same decoder-only model in PyTorch (eager), for the benchmarks' baseline columns.

Parameter names mirror minillm's, so `load_from_minillm(torch_model, model)` copies the weights
and the two can be checked to give the same logits before they are timed.
"""
import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF


def rope_tables(T, D, theta, start=0):
    inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.c, C = c, c.n_embd
        self.H, self.Hkv, self.D = c.n_head, c.n_kv_head or c.n_head, C // c.n_head
        self.wq = tnn.Linear(C, C, bias=c.bias)
        self.wk = tnn.Linear(C, self.Hkv * self.D, bias=c.bias)
        self.wv = tnn.Linear(C, self.Hkv * self.D, bias=c.bias)
        self.wo = tnn.Linear(C, C, bias=c.bias)

    def forward(self, x, cache=None, start=0):
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.wk(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.wv(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        if self.c.positions == "rope":
            cos, sin = rope_tables(T, self.D, self.c.rope_theta, start)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache[0][:, :, start:start + T] = k
            cache[1][:, :, start:start + T] = v
            k, v = cache[0][:, :, :start + T], cache[1][:, :, :start + T]
        S = k.shape[2]
        if T == S:
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.Hkv != self.H)
        else:   # decode: the new queries are the last T positions
            mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
            y = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.Hkv != self.H)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(tnn.Module):
    def __init__(self, C, F):
        super().__init__()
        self.w_gate = tnn.Parameter(torch.empty(F, C))
        self.w_up = tnn.Parameter(torch.empty(F, C))
        self.w_down = tnn.Parameter(torch.empty(C, F))
        for w in (self.w_gate, self.w_up, self.w_down):
            tnn.init.normal_(w, std=0.02)

    def forward(self, x):
        return (TF.silu(x @ self.w_gate.T) * (x @ self.w_up.T)) @ self.w_down.T


class MLP(tnn.Module):
    def __init__(self, C, F, bias):
        super().__init__()
        self.fc, self.proj = tnn.Linear(C, F, bias=bias), tnn.Linear(F, C, bias=bias)

    def forward(self, x):
        return self.proj(TF.gelu(self.fc(x), approximate="tanh"))


def norm(c):
    if c.norm == "rmsnorm":
        return tnn.RMSNorm(c.n_embd, eps=c.norm_eps)
    return tnn.LayerNorm(c.n_embd, eps=c.norm_eps)


class Block(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.attn, self.norm2 = norm(c), Attention(c), norm(c)
        F = c.d_ff or 4 * c.n_embd
        self.ffn = SwiGLU(c.n_embd, F) if c.activation == "swiglu" else MLP(c.n_embd, F, c.bias)

    def forward(self, x, cache=None, start=0):
        x = x + self.attn(self.norm1(x), cache, start)
        return x + self.ffn(self.norm2(x))


class TorchLM(tnn.Module):
    """GPT-2 or Llama flavour (learned or RoPE positions), the same shapes as minillm's DecoderLM."""

    def __init__(self, c):
        super().__init__()
        if c.positions not in ("learned", "rope") or c.window is not None:
            raise ValueError("the torch baseline covers learned/RoPE positions and full causal attention")
        self.c = c
        self.wte = tnn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = tnn.Embedding(c.block_size, c.n_embd) if c.positions == "learned" else None
        self.blocks = tnn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.norm_f = norm(c)
        self.lm_head = None if c.tie_embeddings else tnn.Linear(c.n_embd, c.vocab_size, bias=False)

    def forward(self, ids, targets=None, caches=None, start=0):
        B, T = ids.shape
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T))
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None, start)
        x = self.norm_f(x)
        logits = x @ (self.lm_head.weight if self.lm_head is not None else self.wte.weight).T
        if targets is None:
            return logits
        return logits, TF.cross_entropy(logits.view(B * T, -1), targets.view(-1))

    def new_caches(self, B, max_len):
        c = self.c
        shape = (B, c.n_kv_head or c.n_head, max_len, c.n_embd // c.n_head)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.n_layer)]


def load_from_minillm(torch_model, model):
    """Copy minillm weights into the torch model (same parameter names)."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()}
    missing, unexpected = torch_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    return torch_model


def check_same_logits(torch_model, model, ids, atol=1e-3):
    with torch.no_grad():
        ours = model(ids).data
        theirs = torch_model(torch.from_numpy(ids)).numpy()
    err = float(np.abs(ours - theirs).max())
    if not err <= atol * max(1.0, float(np.abs(theirs).max())):
        raise AssertionError(f"minillm and torch logits differ by {err}")
    return err


def flops_per_token(c):
    """~6 N + 6 L T C per trained token (Kaplan et al.), N = non-embedding parameters."""
    C, L, T = c.n_embd, c.n_layer, c.block_size
    F = c.d_ff or 4 * C
    kv = (c.n_kv_head or c.n_head) * (C // c.n_head)
    per_layer = 2 * C * C + 2 * C * kv + (3 if c.activation == "swiglu" else 2) * C * F
    return 6 * (L * per_layer + C * c.vocab_size) + 6 * L * T * C

