"""Multi-head attention whose keys and values may come from another sequence: the self-attention of
BERT and T5, and the cross-attention of T5's decoder reading its encoder.

    q = x Wq^T          k = source Wk^T,  v = source Wv^T      (source = x for self-attention)
    y = concat_heads(softmax(scale q k^T + bias + mask) v) Wo^T

nn.Attention is the decoder's (RoPE, ALiBi, GQA, sliding windows); this one adds what encoders need
that it lacks: a source other than x, an additive bias (T5's relative positions), T5's unscaled
scores, and a head size that need not be d_model / n_heads (T5's d_kv). Without bias and with the
1/sqrt(D) scale it runs the native attention kernel; otherwise minillm/functional/attention_bias.py.
"""
import numpy as np

from .. import functional as F
from .layers import Linear
from .module import Module


class MultiHeadAttention(Module):
    """n_heads heads of head_dim (default d_model // n_heads); bias: biases in the four projections;
    scaled: 1/sqrt(head_dim) on the scores (False: T5); causal: hide keys after each query."""

    def __init__(self, d_model, n_heads, head_dim=None, bias=True, scaled=True, causal=False, init_std=0.02,
                 rng=None, dtype=np.float32):
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"MultiHeadAttention: d_model {d_model} is not a multiple of n_heads {n_heads}; "
                                 "give head_dim")
            head_dim = d_model // n_heads
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"MultiHeadAttention: head_dim must be a positive int, got {head_dim!r}")
        self.n_heads, self.head_dim, self.scaled, self.causal = n_heads, head_dim, scaled, causal
        inner = n_heads * head_dim
        init = dict(bias=bias, init_std=init_std, rng=rng, dtype=dtype)
        self.wq = Linear(d_model, inner, **init)
        self.wk = Linear(d_model, inner, **init)
        self.wv = Linear(d_model, inner, **init)
        self.wo = Linear(inner, d_model, **init)

    def _heads(self, t, B, T):
        return t.reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)     # (B, H, T, D)

    def project_kv(self, source):
        """(k, v), each (B, H, S, D), of a source sequence (B, S, C): what cross-attention computes
        once per generation and reuses for every new token."""
        B, S, _ = source.shape
        return self._heads(self.wk(source), B, S), self._heads(self.wv(source), B, S)

    def forward(self, x, source=None, kv=None, bias=None, key_padding_mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C).

        source: (B, S, C) to attend to (default x); kv: its (k, v) already projected (project_kv).
        bias: (H, T, S) or (B, H, T, S) added to the scores. key_padding_mask: (B, S) bool, True = keep.
        cache: an nn.KVCache of self-attention keys and values (the T new queries come last).
        """
        if x.ndim != 3 or x.shape[-1] != self.wq.in_features:
            raise ValueError(f"MultiHeadAttention: x must be (B, T, {self.wq.in_features}), got shape {x.shape}")
        B, T, _ = x.shape
        q = self._heads(self.wq(x), B, T)
        k, v = kv if kv is not None else self.project_kv(x if source is None else source)
        if cache is not None:
            k, v = cache.append(k, v)
        y = F.attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask, bias=bias,
                        scale=None if self.scaled else 1.0)                         # (B, H, T, D)
        return self.wo(y.transpose(0, 2, 1, 3).reshape(B, T, self.n_heads * self.head_dim))

    def extra_repr(self):
        return f"heads={self.n_heads}, head_dim={self.head_dim}, scaled={self.scaled}, causal={self.causal}"
