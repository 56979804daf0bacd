"""A decoder-only language model covering the GPT-2 and Llama families from one config.

GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
Llama: RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention via n_kv_head.
Knobs: sinusoidal or ALiBi positions, sliding-window attention, dropout, tied or untied head.

    ids (B, T) -> token embedding (+ position embedding) -> n_layer x TransformerBlock
               -> final norm -> logits (B, T, V) = x @ head^T
"""
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor

POSITIONS = ("learned", "sinusoidal", "rope", "alibi")


def config_from_dict(cls, values):
    """cls(**values) for a config dataclass, naming any key it does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**values)


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
    norm_eps: float = 1e-5
    init_std: float = 0.02

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

    @property
    def hidden_size(self):
        return self.d_ff or 4 * self.n_embd

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
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, c.init_std, rng, dtype)
        self.wpe = nn.Embedding(c.block_size, c.n_embd, c.init_std, rng, dtype) if c.positions == "learned" else None
        self.sinusoids = F.sinusoidal_positions(c.block_size, c.n_embd, dtype) if c.positions == "sinusoidal" else None
        self.drop = nn.Dropout(c.dropout, rng=rng)
        block_positions = c.positions if c.positions in ("rope", "alibi") else None
        self.blocks = nn.ModuleList([
            nn.TransformerBlock(c.n_embd, c.n_head, c.n_kv_head, c.hidden_size, c.norm, c.activation,
                                block_positions, True, c.window, c.bias, c.dropout, c.norm_eps, c.rope_theta,
                                c.init_std, rng, dtype)
            for _ in range(c.n_layer)])
        self.norm_f = nn.block.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, False, c.init_std, rng, dtype)
        # GPT-2's scaled init: the projections into the residual stream get std / sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.wo.weight", "ffn.proj.weight", "ffn.w_down")):
                p.data = (rng.standard_normal(p.shape) * c.init_std / np.sqrt(2 * c.n_layer)).astype(dtype)

    def forward(self, ids, targets=None, positions=None, key_padding_mask=None, caches=None):
        """ids: (B, T) ints -> logits (B, T, V); with targets (B, T) also the mean cross-entropy.

        positions: (T,) or (B, T), default start..start+T-1 where start = tokens already cached.
        key_padding_mask: (B, S) bool, True = real token, over the cache and the new tokens.
        caches: a list of nn.KVCache, one per block (see new_caches), when generating.
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"DecoderLM: ids must be (B, T), got shape {ids.shape}")
        B, T = ids.shape
        start = caches[0].length if caches else 0
        if positions is None:
            positions = np.arange(start, start + T)
        if np.max(positions, initial=0) >= self.config.block_size:
            raise ValueError(f"DecoderLM: position {int(np.max(positions))} is beyond the context length "
                             f"{self.config.block_size}")
        x = self.wte(ids)                                          # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        elif self.sinusoids is not None:
            x = x + Tensor(self.sinusoids[positions])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, key_padding_mask, caches[i] if caches else None)
        x = self.norm_f(x)
        logits = self.lm_head(x) if self.lm_head is not None else self.wte.attend(x)   # (B, T, V)
        if targets is None:
            return logits
        targets = np.asarray(targets)
        if targets.shape != (B, T):
            raise ValueError(f"DecoderLM: targets must have the shape of ids {ids.shape}, got {targets.shape}")
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
        return logits, loss

    def new_caches(self, batch, max_len=None, dtype=np.float32):
        """One empty KVCache per block, for up to max_len (default: the context length) tokens."""
        c = self.config
        max_len = max_len or c.block_size
        return [nn.KVCache(batch, c.n_kv_head or c.n_head, max_len, c.n_embd // c.n_head, dtype)
                for _ in range(c.n_layer)]

    def num_parameters(self, exclude_embeddings=False):
        """Exact count; tied embeddings count once. exclude_embeddings drops the token and position tables."""
        n = super().num_parameters()
        if exclude_embeddings:
            n -= self.wte.weight.size + (self.wpe.weight.size if self.wpe is not None else 0)
        return n
