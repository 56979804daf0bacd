"""The blocks of encoder-only (BERT) and encoder-decoder (T5) models, built from one config.

    post-norm (BERT):  x = norm1(x + attn(x));           x = norm2(x + ffn(x))
    pre-norm (T5):     x = x + attn(norm1(x));           x = x + ffn(norm2(x))

A DecoderBlock puts cross-attention to the encoder's output (the "memory") between the two:

    pre-norm:          x = x + self_attn(norm1(x));  x = x + cross_attn(norm2(x), memory);  x = x + ffn(norm3(x))

Self-attention is bidirectional in the encoder and causal in the decoder. Positions are the model's
business: BERT adds learned position embeddings to its input, T5 passes the relative position bias
of its stack (the same for every block) into each self-attention.
"""
from dataclasses import dataclass

import numpy as np

from .feedforward import ACTIVATIONS, FeedForward
from .layers import NORMS, Dropout
from .mha import MultiHeadAttention
from .module import Module


@dataclass(frozen=True)
class EncoderBlockConfig:
    d_model: int
    n_heads: int
    head_dim: int | None = None      # None: d_model // n_heads (T5's d_kv may differ)
    d_ff: int | None = None          # None: 4 * d_model
    norm: str = "layernorm"          # layernorm (BERT) | rmsnorm (T5: no bias, no mean)
    norm_position: str = "post"      # post (BERT) | pre (T5, and pre-LN BERT)
    activation: str = "gelu"         # gelu (exact erf) | gelu_tanh | relu | silu
    gated: bool = False              # gated feed-forward (T5 v1.1's gated-gelu)
    bias: bool = True                # biases in the projections and the feed-forward
    scaled: bool = True              # 1/sqrt(head_dim) on the scores (False: T5)
    dropout: float = 0.0
    eps: float = 1e-12
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("d_model", "n_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EncoderBlockConfig: {name} must be a positive int, got {getattr(self, name)!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"EncoderBlockConfig: d_model {self.d_model} must be a multiple of n_heads "
                             f"{self.n_heads} (or give head_dim)")
        if self.norm not in NORMS:
            raise ValueError(f"EncoderBlockConfig: norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"EncoderBlockConfig: norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"EncoderBlockConfig: activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EncoderBlockConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def hidden_dim(self):
        return self.d_ff or 4 * self.d_model


def _norm(c, dtype):
    return NORMS[c.norm](c.d_model, c.eps, dtype=dtype)


def _attention(c, causal, rng, dtype):
    return MultiHeadAttention(c.d_model, c.n_heads, c.head_dim, bias=c.bias, scaled=c.scaled, causal=causal,
                              init_std=c.init_std, rng=rng, dtype=dtype)


def _residual(c, x, norm, sublayer, dropout):
    """One residual sub-layer, post- or pre-norm: norm(x + f(x)) or x + f(norm(x))."""
    if c.norm_position == "post":
        return norm(x + dropout(sublayer(x)))
    return x + dropout(sublayer(norm(x)))


class EncoderBlock(Module):
    """Bidirectional self-attention and a feed-forward, each a residual sub-layer."""

    def __init__(self, config, *, rng=None, dtype=np.float32):
        if not isinstance(config, EncoderBlockConfig):
            raise TypeError(f"EncoderBlock: config must be an nn.EncoderBlockConfig, got {type(config).__name__}")
        c = self.config = config
        self.attn = _attention(c, False, rng, dtype)
        self.norm1 = _norm(c, dtype)
        self.ffn = FeedForward(c.d_model, c.hidden_dim, c.activation, c.gated, c.bias, c.init_std, rng, dtype)
        self.norm2 = _norm(c, dtype)
        self.dropout = Dropout(c.dropout, rng=rng)

    def forward(self, x, key_padding_mask=None, bias=None):
        """x: (B, T, C) -> (B, T, C). key_padding_mask: (B, T) bool, True = a real token; bias: (H, T, T)."""
        c = self.config
        x = _residual(c, x, self.norm1, lambda h: self.attn(h, bias=bias, key_padding_mask=key_padding_mask),
                      self.dropout)
        return _residual(c, x, self.norm2, self.ffn, self.dropout)


class DecoderBlock(Module):
    """Causal self-attention, cross-attention to the encoder's output, a feed-forward."""

    def __init__(self, config, *, rng=None, dtype=np.float32):
        if not isinstance(config, EncoderBlockConfig):
            raise TypeError(f"DecoderBlock: config must be an nn.EncoderBlockConfig, got {type(config).__name__}")
        c = self.config = config
        self.attn = _attention(c, True, rng, dtype)
        self.norm1 = _norm(c, dtype)
        self.cross = _attention(c, False, rng, dtype)
        self.norm2 = _norm(c, dtype)
        self.ffn = FeedForward(c.d_model, c.hidden_dim, c.activation, c.gated, c.bias, c.init_std, rng, dtype)
        self.norm3 = _norm(c, dtype)
        self.dropout = Dropout(c.dropout, rng=rng)

    def forward(self, x, memory=None, memory_kv=None, memory_mask=None, key_padding_mask=None, bias=None,
                cache=None):
        """x: (B, T, C) -> (B, T, C).

        memory: the encoder's output (B, S, C), or memory_kv: its keys and values for this block's
        cross-attention (cross.project_kv(memory), computed once per generation). memory_mask: (B, S)
        bool over the source. key_padding_mask: (B, cache + T) over the decoder's own tokens; bias:
        (H, T, cache + T); cache: this block's nn.KVCache of self-attention keys and values.
        """
        c = self.config
        x = _residual(c, x, self.norm1, lambda h: self.attn(h, bias=bias, key_padding_mask=key_padding_mask,
                                                            cache=cache), self.dropout)
        x = _residual(c, x, self.norm2, lambda h: self.cross(h, source=memory, kv=memory_kv,
                                                             key_padding_mask=memory_mask), self.dropout)
        return _residual(c, x, self.norm3, self.ffn, self.dropout)
