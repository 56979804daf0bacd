"""Whole-model golden test, in the spirit of llm.c's test_gpt2.c: a small GPT-2-flavour and a
small Llama-flavour DecoderLM in float64 against independent PyTorch implementations of the same
models, written below from the definitions (not from minillm's code).

For each flavour and kernel backend: the logits, the loss, the gradient of every parameter, and
the losses of the first 10 training steps (global-norm clipping, then AdamW with weight decay on
the linear layers' matrices only, as minillm's training recipe does; torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ on the torch side) are equal.

Tolerances: both sides compute in float64 on O(1) values, so they differ only by rounding in
different summation orders, ~1e-15 relative; 1e-10 on logits, loss and gradients leaves five
orders of magnitude of room while any real mistake (a wrong eps, a missing bias, a transposed
rotation) shows at 1e-3 or more. The 10 training steps compound rounding through Adam's division
by sqrt(v), so the step losses and final weights get 1e-9. Skipped when torch is not installed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

from minillm.models import DecoderLM, ModelConfig  # noqa: E402
from minillm.optim import AdamW, clip_grad_norm, param_groups  # noqa: E402
from minillm.train import TrainConfig  # noqa: E402

RTOL = ATOL = 1e-10
STEP_RTOL = STEP_ATOL = 1e-9
B, T = 3, 10

GPT2 = dict(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_embd=16)            # learned, LayerNorm, GELU, bias, tied
LLAMA = dict(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, d_ff=40, norm="rmsnorm",
             activation="swiglu", positions="rope", bias=False, tie_embeddings=False, rope_theta=500.0)


# --------------------------------------------------------------------------- the torch models

def causal_attention(q, k, v):
    """q: (B, H, T, D), k, v: (B, Hkv, T, D); query head h reads kv head h // (H / Hkv)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    future = torch.triu(torch.ones(q.shape[2], q.shape[2], dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


class GPT2Block(tnn.Module):
    def __init__(self, C, H, eps):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = tnn.LayerNorm(C, eps=eps), tnn.LayerNorm(C, eps=eps)
        self.q, self.k, self.v, self.proj = (tnn.Linear(C, C) for _ in range(4))
        self.c_fc, self.c_proj = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)

    def forward(self, x):
        Bx, Tx, C = x.shape
        h = self.ln_1(x)
        q, k, v = (f(h).view(Bx, Tx, self.H, C // self.H).transpose(1, 2) for f in (self.q, self.k, self.v))
        x = x + self.proj(causal_attention(q, k, v).transpose(1, 2).reshape(Bx, Tx, C))
        return x + self.c_proj(TF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT2(tnn.Module):
    """GPT-2: token + learned position embeddings, pre-LayerNorm blocks with biases, a GELU (tanh)
    MLP of width 4C, a final LayerNorm, and the token table as the output head."""

    def __init__(self, c):
        super().__init__()
        self.wte, self.wpe = tnn.Embedding(c.vocab_size, c.n_embd), tnn.Embedding(c.block_size, c.n_embd)
        self.h = tnn.ModuleList(GPT2Block(c.n_embd, c.n_head, c.norm_eps) for _ in range(c.n_layer))
        self.ln_f = tnn.LayerNorm(c.n_embd, eps=c.norm_eps)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def rms_norm(x, weight, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rotary(x, theta):
    """Rotate-half RoPE: pair (x_i, x_{i+D/2}) at position p turns by p * theta^(-2i/D)."""
    D = x.shape[-1]
    angle = torch.arange(x.shape[2], dtype=x.dtype)[:, None] * theta ** (-torch.arange(0, D, 2, dtype=x.dtype) / D)
    cos, sin = torch.cos(angle), torch.sin(angle)                 # (T, D/2)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LlamaBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        C, D = c.n_embd, c.n_embd // c.n_head
        self.H, self.Hkv, self.eps, self.theta = c.n_head, c.n_kv_head, c.norm_eps, c.rope_theta
        self.attention_norm, self.ffn_norm = tnn.Parameter(torch.ones(C)), tnn.Parameter(torch.ones(C))
        self.wq, self.wo = tnn.Linear(C, C, bias=False), tnn.Linear(C, C, bias=False)
        self.wk, self.wv = tnn.Linear(C, self.Hkv * D, bias=False), tnn.Linear(C, self.Hkv * D, bias=False)
        self.w1, self.w3 = tnn.Linear(C, c.d_ff, bias=False), tnn.Linear(C, c.d_ff, bias=False)
        self.w2 = tnn.Linear(c.d_ff, C, bias=False)

    def forward(self, x):
        Bx, Tx, C = x.shape
        D = C // self.H
        h = rms_norm(x, self.attention_norm, self.eps)
        q = rotary(self.wq(h).view(Bx, Tx, self.H, D).transpose(1, 2), self.theta)
        k = rotary(self.wk(h).view(Bx, Tx, self.Hkv, D).transpose(1, 2), self.theta)
        v = self.wv(h).view(Bx, Tx, self.Hkv, D).transpose(1, 2)
        x = x + self.wo(causal_attention(q, k, v).transpose(1, 2).reshape(Bx, Tx, C))
        h = rms_norm(x, self.ffn_norm, self.eps)
        return x + self.w2(TF.silu(self.w1(h)) * self.w3(h))


class TorchLlama(tnn.Module):
    """Llama: token embeddings, pre-RMSNorm blocks without biases, RoPE on q and k, grouped-query
    attention, a SwiGLU feed-forward, a final RMSNorm, and a separate output matrix."""

    def __init__(self, c):
        super().__init__()
        self.tok_embeddings = tnn.Embedding(c.vocab_size, c.n_embd)
        self.layers = tnn.ModuleList(LlamaBlock(c) for _ in range(c.n_layer))
        self.norm = tnn.Parameter(torch.ones(c.n_embd))
        self.output = tnn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.eps = c.norm_eps

    def forward(self, ids):
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer(x)
        return self.output(rms_norm(x, self.norm, self.eps))


# --------------------------------------------------------------------------- the name mapping

def torch_to_minillm_names(flavour, n_layer):
    """{torch parameter name: minillm parameter name}."""
    if flavour == "gpt2":
        names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
                 "ln_f.weight": "norm_f.weight", "ln_f.bias": "norm_f.bias"}
        per_block = {"ln_1": "norm1", "ln_2": "norm2", "q": "attn.wq", "k": "attn.wk", "v": "attn.wv",
                     "proj": "attn.wo", "c_fc": "ffn.fc", "c_proj": "ffn.proj"}
        for i in range(n_layer):
            for ours, theirs in per_block.items():
                for kind in ("weight", "bias"):
                    names[f"h.{i}.{ours}.{kind}"] = f"blocks.{i}.{theirs}.{kind}"
        return names
    names = {"tok_embeddings.weight": "wte.weight", "norm": "norm_f.weight", "output.weight": "lm_head.weight"}
    per_block = {"attention_norm": "norm1.weight", "ffn_norm": "norm2.weight", "wq.weight": "attn.wq.weight",
                 "wk.weight": "attn.wk.weight", "wv.weight": "attn.wv.weight", "wo.weight": "attn.wo.weight",
                 "w1.weight": "ffn.w_gate", "w3.weight": "ffn.w_up", "w2.weight": "ffn.w_down"}
    for i in range(n_layer):
        for ours, theirs in per_block.items():
            names[f"layers.{i}.{ours}"] = f"blocks.{i}.{theirs}"
    return names


def twin_models(flavour, seed=0):
    """A float64 DecoderLM with every parameter random (biases and norm gains too, so each one
    matters), and the torch model holding the same values."""
    config = ModelConfig(**(GPT2 if flavour == "gpt2" else LLAMA))
    ours = DecoderLM(config, rng=np.random.default_rng(seed), dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    params = dict(ours.named_parameters())
    for name, p in params.items():
        gain = name.endswith(("norm1.weight", "norm2.weight", "norm_f.weight"))
        p.data = (1.0 if gain else 0.0) + rng.standard_normal(p.shape) * (0.3 if gain else 0.4)
    theirs = (TorchGPT2 if flavour == "gpt2" else TorchLlama)(config).double()
    mapping = torch_to_minillm_names(flavour, config.n_layer)
    assert sorted(mapping) == sorted(n for n, _ in theirs.named_parameters()), "the torch side of the mapping"
    assert sorted(mapping.values()) == sorted(params), "every minillm parameter is mapped once"
    with torch.no_grad():
        for t_name, t in theirs.named_parameters():
            t.copy_(torch.from_numpy(params[mapping[t_name]].data))
    return ours, theirs, mapping


def batch(seed=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 23, size=(B, T))
    targets = rng.integers(0, 23, size=(B, T))
    targets[1, 3] = -100                                           # an ignored position
    return ids, targets


def torch_loss(model, ids, targets):
    logits = model(torch.from_numpy(ids))
    return logits, TF.cross_entropy(logits.reshape(B * T, -1), torch.from_numpy(targets).reshape(-1),
                                    ignore_index=-100)


FLAVOURS = ["gpt2", "llama"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_logits_loss_and_every_gradient_equal_torch(backend, flavour):
    ours, theirs, mapping = twin_models(flavour)
    ids, targets = batch()
    logits, loss = ours(ids, targets)
    t_logits, t_loss = torch_loss(theirs, ids, targets)
    np.testing.assert_allclose(logits.data, t_logits.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="logits")
    assert abs(float(loss.data) - t_loss.item()) <= ATOL + RTOL * abs(t_loss.item())
    assert t_loss.item() > 1.0                                     # a real loss, not a degenerate one
    loss.backward()
    t_loss.backward()
    params = dict(ours.named_parameters())
    for t_name, t in theirs.named_parameters():
        name = mapping[t_name]
        assert params[name].grad is not None, f"{name} got no gradient"
        np.testing.assert_allclose(params[name].grad, t.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def decayed_names(model):
    """The training recipe's rule, from its definition: weight decay on the matrices of linear
    layers; none on embeddings (the tied head included), norm gains and biases."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, tnn.Linear)}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_ten_adamw_steps_have_the_losses_of_torch(backend, flavour):
    recipe = TrainConfig()
    lr, betas, wd, clip = 1e-2, (recipe.beta1, recipe.beta2), recipe.weight_decay, recipe.grad_clip
    ours, theirs, mapping = twin_models(flavour)
    opt = AdamW(param_groups(ours, wd), lr=lr, betas=betas)
    t_params, decay = dict(theirs.named_parameters()), decayed_names(theirs)
    t_opt = torch.optim.AdamW([{"params": [p for n, p in t_params.items() if n in decay], "weight_decay": wd},
                               {"params": [p for n, p in t_params.items() if n not in decay], "weight_decay": 0.0}],
                              lr=lr, betas=betas, eps=1e-8)
    assert {mapping[n] for n in decay} == set(param_groups(ours, wd)[0]["params"])   # the same split
    losses, t_losses, norms = [], [], []
    for step in range(10):
        ids, targets = batch(seed=10 + step)
        _, loss = ours(ids, targets)
        loss.backward()
        norms.append(clip_grad_norm(ours.parameters(), clip))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.data))

        _, t_loss = torch_loss(theirs, ids, targets)
        t_loss.backward()
        tnn.utils.clip_grad_norm_(theirs.parameters(), clip)
        t_opt.step()
        t_opt.zero_grad()
        t_losses.append(t_loss.item())
    np.testing.assert_allclose(losses, t_losses, rtol=STEP_RTOL, atol=STEP_ATOL)
    assert max(norms) > clip and losses[-1] < losses[0]           # clipping was active; training moved
    params = dict(ours.named_parameters())
    for t_name, t in t_params.items():
        np.testing.assert_allclose(params[mapping[t_name]].data, t.detach().numpy(), rtol=STEP_RTOL,
                                   atol=STEP_ATOL, err_msg=mapping[t_name])

