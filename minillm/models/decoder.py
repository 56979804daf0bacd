"""A decoder-only language model covering the GPT-2 and Llama families from one config.

GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
Llama: RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention via n_kv_head.
Knobs: sinusoidal or ALiBi positions, sliding-window attention, dropout, tied or untied head.
Mixture-of-Experts: n_experts > 0 turns the FFN of every moe_every-th block (block i with
(i + 1) % moe_every == 0) into an nn.MoE of n_experts FFNs, top_k per token.

    ids (B, T) -> token embedding (+ position embedding) -> n_layer x TransformerBlock
               -> final norm -> logits (B, T, V) = x @ head^T
"""
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .. import nn
from ..autograd import Tensor
from ..config import config_from_dict

POSITIONS = ("learned", "sinusoidal", "rope", "alibi")


@dataclass
class ModelConfig:
    vocab_size: int = 65
    block_size: int = 64            # the context length
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None    # None: = n_head (MHA); 1: MQA; between: GQA
    n_embd: int = 128
    d_ff: int | None = None         # feed-forward hidden size; None: 4 * n_embd
    norm: str = "layernorm"         # layernorm | rmsnorm
    activation: str = "gelu"        # gelu | swiglu
    positions: str = "learned"      # learned | sinusoidal | rope | alibi
    window: int | None = None       # sliding-window attention size; None: full causal
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Hugging Face's rope_scaling: {"rope_type": linear|dynamic|yarn|llama3, "factor", ...}
    attention: str = "softmax"      # softmax | linear (elu + 1 features, running sums)
    attention_pattern: dict | None = None   # sparse attention: {"kind": dilated|strided|block_sparse, ...}
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # Mixture-of-Experts (nn.MoE); n_experts = 0 is a dense model and ignores the rest
    n_experts: int = 0              # experts per MoE block
    top_k: int = 2                  # experts per token (1: Switch, 2: Mixtral)
    capacity_factor: float | None = 1.25   # expert capacity ceil(cf * top_k * N / E) while training; None: no dropping
    aux_loss_coef: float = 0.01     # weight of the load-balancing loss (summed over MoE blocks)
    z_loss_coef: float = 0.001      # weight of the router z-loss (summed over MoE blocks)
    moe_every: int = 1              # block i is MoE when (i + 1) % moe_every == 0
    renormalize_gates: bool = True  # top_k > 1: gates divided by their sum

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelConfig: {name} must be a positive int, got {getattr(self, name)!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"ModelConfig: positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig: n_embd {self.n_embd} must be a multiple of n_head {self.n_head}")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"ModelConfig: n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout}")
        self._check_moe()
        self.rope_scaling_config()                 # a bad rope_scaling fails here, naming the key
        self.block_config(0)                       # and so do bad attention options

    def rope_scaling_config(self):
        """rope_scaling as an F.RopeScaling (None when unset); dynamic and yarn default their trained
        context to block_size, as Hugging Face defaults them to max_position_embeddings."""
        if self.rope_scaling is None:
            return None
        if self.positions != "rope":
            raise ValueError(f"ModelConfig: rope_scaling needs positions = 'rope', got {self.positions!r}")
        return F.RopeScaling.from_dict(self.rope_scaling, self.block_size, where="ModelConfig: rope_scaling")

    def _check_moe(self):
        if not isinstance(self.n_experts, int) or self.n_experts < 0:
            raise ValueError(f"ModelConfig: n_experts must be an int >= 0 (0: dense), got {self.n_experts!r}")
        if not isinstance(self.moe_every, int) or self.moe_every < 1:
            raise ValueError(f"ModelConfig: moe_every must be a positive int, got {self.moe_every!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"ModelConfig: {name} must be a number >= 0 (0 turns the loss off), got {value!r}")
        if not isinstance(self.renormalize_gates, bool):
            raise ValueError(f"ModelConfig: renormalize_gates must be true or false, got {self.renormalize_gates!r}")
        if self.n_experts == 0:
            return
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"ModelConfig: top_k must be an int in [1, n_experts={self.n_experts}], "
                             f"got {self.top_k!r}")
        cf = self.capacity_factor
        if cf is not None and (not isinstance(cf, (int, float)) or not cf > 0):
            raise ValueError(f"ModelConfig: capacity_factor must be > 0, or null for no token dropping, got {cf!r}")
        if self.moe_every > self.n_layer:
            raise ValueError(f"ModelConfig: moe_every {self.moe_every} is more than n_layer {self.n_layer}, "
                             "so no block would be MoE; lower moe_every or set n_experts = 0")

    def is_moe_block(self, i):
        """Block i (from 0) is a Mixture-of-Experts block when n_experts > 0 and (i + 1) % moe_every == 0."""
        return self.n_experts > 0 and (i + 1) % self.moe_every == 0

    @property
    def hidden_size(self):
        return self.d_ff or 4 * self.n_embd

    def block_config(self, i):
        """The nn.BlockConfig of block i (from 0): the same for every block, except that MoE blocks
        (is_moe_block) get n_experts and dense ones 0. RoPE and ALiBi act inside the blocks; learned
        and sinusoidal positions are added to the embeddings by the model, so the blocks get None."""
        return nn.BlockConfig(
            d_model=self.n_embd, n_heads=self.n_head, n_kv_heads=self.n_kv_head, d_ff=self.hidden_size,
            norm=self.norm, activation=self.activation,
            positions=self.positions if self.positions in ("rope", "alibi") else None, causal=True,
            window=self.window, bias=self.bias, dropout=self.dropout, eps=self.norm_eps, rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling_config(), attention=self.attention,
            attention_pattern=F.AttentionPattern.from_dict(self.attention_pattern, "ModelConfig: attention_pattern"),
            init_std=self.init_std, n_experts=self.n_experts if self.is_moe_block(i) else 0, top_k=self.top_k,
            capacity_factor=self.capacity_factor, renormalize_gates=self.renormalize_gates)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        return config_from_dict(cls, values)


class DecoderLM(nn.Module):
    def __init__(self, config, rng=None, dtype=np.float32):
        self.config = config
        c = config
        rng = rng if rng is not None else nn.default_rng()
        init = dict(init_std=c.init_std, rng=rng, dtype=dtype)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, **init)
        self.wpe = nn.Embedding(c.block_size, c.n_embd, **init) if c.positions == "learned" else None
        self.sinusoids = F.sinusoidal_positions(c.block_size, c.n_embd, dtype) if c.positions == "sinusoidal" else None
        self.drop = nn.Dropout(c.dropout, rng=rng)
        self.blocks = nn.ModuleList([nn.TransformerBlock(c.block_config(i), rng=rng, dtype=dtype)
                                     for i in range(c.n_layer)])
        self.norm_f = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False, **init)
        # GPT-2's scaled init: the projections into the residual stream get std / sqrt(2 n_layer)
        residual = ("attn.wo.weight", "ffn.proj.weight", "ffn.w_down")
        for name, p in self.named_parameters():
            if name.endswith(residual) or (".ffn.experts." in name and name.endswith(("proj.weight", "w_down"))):
                p.data = (rng.standard_normal(p.shape) * c.init_std / np.sqrt(2 * c.n_layer)).astype(dtype)

    def forward(self, ids, targets=None, positions=None, key_padding_mask=None, caches=None):
        """ids: (B, T) ints -> logits (B, T, V); with targets (B, T) also the loss.

        loss: the mean cross-entropy; for an MoE model in training mode plus the router losses,
            aux_loss_coef * sum of the blocks' balancing losses + z_loss_coef * sum of their z-losses
        (what training minimises). In eval mode it is the cross-entropy alone, so val losses compare
        with a dense model's. moe_stats() has the parts of the last forward.

        positions: (T,) or (B, T), default start..start+T-1 where start = tokens already cached.
        key_padding_mask: (B, S) bool, True = real token, over the cache and the new tokens.
        caches: a list of nn.KVCache, one per block (see new_caches), when generating.
        """
        ids, positions = self._check_inputs(ids, positions, caches)
        x = self._hidden(ids, positions, key_padding_mask, caches)                     # (B, T, C)
        logits = self.lm_head(x) if self.lm_head is not None else self.wte.attend(x)   # (B, T, V)
        if targets is None:
            return logits
        targets = self._check_targets(ids, targets)
        B, T = ids.shape
        return logits, self._objective(F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1)))

    def hidden_states(self, ids, positions=None, key_padding_mask=None):
        """ids: (B, T) -> the final-norm hidden states (B, T, C) the head reads (no cache); what a scalar
        head on top of the decoder (a reward model, a value head) is built on. head(hidden) gives the logits."""
        ids, positions = self._check_inputs(ids, positions, None)
        return self._hidden(ids, positions, key_padding_mask, None)

    def head(self, hidden):
        """(B, T, C) hidden states -> (B, T, V) logits: the LM head (or the tied embedding)."""
        return self.lm_head(hidden) if self.lm_head is not None else self.wte.attend(hidden)

    def loss(self, ids, targets):
        """forward's loss alone, what training computes: the head and the cross-entropy are one node
        (F.linear_cross_entropy) that drops the (B * T, V) logits as soon as it has their gradient."""
        ids, positions = self._check_inputs(ids, None, None)
        targets = self._check_targets(ids, targets)
        x = self._hidden(ids, positions, None, None)
        B, T, C = x.shape
        head = getattr(self.lm_head if self.lm_head is not None else self.wte, "weight", None)
        if not isinstance(head, Tensor):                # a quantized head: the logits, then the loss
            logits = self.lm_head(x) if self.lm_head is not None else self.wte.attend(x)
            return self._objective(F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1)))
        return self._objective(F.linear_cross_entropy(x.reshape(B * T, C), head, targets.reshape(-1)))

    def _hidden(self, ids, positions, key_padding_mask, caches):
        """The embeddings through the blocks and the final norm: (B, T, C), what the head reads."""
        x = self.wte(ids)                                          # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        elif self.sinusoids is not None:
            x = x + Tensor(self.sinusoids[positions])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, key_padding_mask, caches[i] if caches else None)
        return self.norm_f(x)

    def _check_targets(self, ids, targets):
        targets = np.asarray(targets)
        if targets.shape != ids.shape:
            raise ValueError(f"DecoderLM: targets must have the shape of ids {ids.shape}, got {targets.shape}")
        return targets

    def _objective(self, loss):
        """The cross-entropy, plus an MoE model's router losses while training (see forward)."""
        self._last_ce = float(loss.data)
        moe = self.moe_layers()
        if moe and self.training:
            c = self.config
            if c.aux_loss_coef:
                loss = loss + sum((m.aux_loss for m in moe[1:]), moe[0].aux_loss) * c.aux_loss_coef
            if c.z_loss_coef:
                loss = loss + sum((m.z_loss for m in moe[1:]), moe[0].z_loss) * c.z_loss_coef
        return loss

    def infer(self, ids, positions=None, key_padding_mask=None, caches=None, last_only=False, logit_rows=None):
        """forward without the tape, on arrays, for generation: ids (B, T) -> logits (B, T, V) array.

        Each block runs its infer (the same math as forward, straight to the kernels, q/k/v and
        gate/up each as one matmul); last_only: logits of the last position only, (B, 1, V), which
        is all sampling needs (it skips the head's matmul for the rest of a prompt). logit_rows:
        the positions along T to give logits for, (B, len(logit_rows), V) (the serving engine packs
        several sequences in one row and samples after the last token of each).
        """
        ids, positions = self._check_inputs(ids, positions, caches)
        x = self.wte.infer(ids)                                    # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe.infer(positions)
        elif self.sinusoids is not None:
            x = x + self.sinusoids[positions]
        for i, block in enumerate(self.blocks):
            x = block.infer(x, positions, key_padding_mask, caches[i] if caches else None)
        if logit_rows is not None:
            x = x[:, np.asarray(logit_rows, dtype=np.int64)]
        x = self.norm_f.infer(x[:, -1:] if last_only else x)
        return self.lm_head.infer(x) if self.lm_head is not None else self.wte.infer_attend(x)   # (B, T, V)

    def _check_inputs(self, ids, positions, caches):
        """ids as a (B, T) array and the positions (default: after what the caches hold), checked."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"DecoderLM: ids must be (B, T), got shape {ids.shape}")
        if positions is None:
            start = caches[0].length if caches else 0
            positions = np.arange(start, start + ids.shape[1])
        if np.max(positions, initial=0) >= self.config.block_size:
            raise ValueError(f"DecoderLM: position {int(np.max(positions))} is beyond the context length "
                             f"{self.config.block_size}")
        return ids, positions

    def moe_layers(self):
        """The nn.MoE feed-forwards, in block order (empty for a dense model)."""
        return [b.ffn for b in self.blocks if isinstance(b.ffn, nn.MoE)]

    def moe_stats(self):
        """What the router did in the last forward, or None for a dense model:
        {"blocks": indices of the MoE blocks, "load": per MoE block a list of E fractions of the
        top-k assignments per expert, "dropped": per block the fraction dropped at capacity,
        "aux_loss", "z_loss": sums over the blocks, "ce": the cross-entropy (when targets were given)}."""
        moe = self.moe_layers()
        if not moe or moe[0].stats is None:
            return None
        return {"blocks": [i for i in range(self.config.n_layer) if self.config.is_moe_block(i)],
                "load": [m.stats["load"].tolist() for m in moe], "dropped": [m.stats["dropped"] for m in moe],
                "aux_loss": sum(m.stats["aux_loss"] for m in moe), "z_loss": sum(m.stats["z_loss"] for m in moe),
                "ce": getattr(self, "_last_ce", None)}

    def new_caches(self, batch, max_len=None, dtype=np.float32, sinks=None):
        """One empty KVCache per block, for up to max_len (default: the context length) tokens.

        Linear attention gets an nn.LinearAttentionState per block (constant size). sinks=(n_sink,
        window): an nn.SinkKVCache per block (StreamingLLM), which keeps the first n_sink tokens and
        the last window, so generation runs on at constant memory; n_sink + window must fit in the
        context (positions are counted inside the cache)."""
        c = self.config
        D = c.n_embd // c.n_head
        if c.attention == "linear":
            return [nn.LinearAttentionState(batch, c.n_head, D, dtype=dtype) for _ in range(c.n_layer)]
        if sinks is not None:
            n_sink, window = sinks
            if c.positions != "rope" or c.attention != "softmax":
                raise ValueError(f"new_caches: attention sinks need softmax attention with RoPE (positions counted in "
                                 f"the cache), not positions={c.positions!r}, attention={c.attention!r}")
            if n_sink + window >= c.block_size:
                raise ValueError(f"new_caches: sinks {n_sink} + window {window} must be less than the context "
                                 f"length {c.block_size}")
            return [nn.SinkKVCache(batch, c.n_kv_head or c.n_head, n_sink, window, D, dtype) for _ in range(c.n_layer)]
        max_len = max_len or c.block_size
        return [nn.KVCache(batch, c.n_kv_head or c.n_head, max_len, c.n_embd // c.n_head, dtype)
                for _ in range(c.n_layer)]

    def num_parameters(self, exclude_embeddings=False):
        """Exact count of the float parameters; tied embeddings count once. exclude_embeddings drops the
        token and position tables. (A quantized model's integer weights are buffers, not counted.)"""
        n = super().num_parameters()
        if exclude_embeddings:
            for table in (self.wte, self.wpe):
                if table is not None and isinstance(getattr(table, "weight", None), nn.Parameter):
                    n -= table.weight.size
        return n
