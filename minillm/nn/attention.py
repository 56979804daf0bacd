"""Multi-head self-attention (MHA, GQA, MQA) with RoPE, ALiBi or no positions in the layer."""
import numpy as np

from .. import functional as F
from ..tensor import Tensor
from .layers import Linear
from .module import Module

POSITIONS = (None, "rope", "alibi")


class Attention(Module):
    """softmax(q k^T / sqrt(D) + mask) v over n_heads query heads sharing n_kv_heads key/value heads.

    n_kv_heads = n_heads is MHA, 1 is MQA, anything between that divides n_heads is GQA.
    positions: "rope" rotates q and k, "alibi" biases the scores, None leaves positions to the
    model (learned or sinusoidal embeddings added to the input).
    """

    def __init__(self, d_model, n_heads, n_kv_heads=None, positions="rope", causal=True, window=None,
                 rope_theta=10000.0, bias=False, init_std=0.02, rng=None, dtype=np.float32):
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"Attention: d_model {d_model} must be a multiple of n_heads {n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"Attention: n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
        if positions not in POSITIONS:
            raise ValueError(f"Attention: positions must be one of {POSITIONS}, got {positions!r}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        if positions == "rope" and self.head_dim % 2:
            raise ValueError(f"Attention: RoPE needs an even head dim, got {self.head_dim}")
        self.positions, self.causal, self.window, self.rope_theta = positions, causal, window, rope_theta
        self.alibi_slopes = F.alibi_slopes(n_heads) if positions == "alibi" else None
        kv_dim = n_kv_heads * self.head_dim
        self.wq = Linear(d_model, d_model, bias, init_std, rng, dtype)
        self.wk = Linear(d_model, kv_dim, bias, init_std, rng, dtype)
        self.wv = Linear(d_model, kv_dim, bias, init_std, rng, dtype)
        self.wo = Linear(d_model, d_model, bias, init_std, rng, dtype)

    def forward(self, x, positions=None, key_padding_mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C). positions: (T,) or (B, T) ints for RoPE (default 0..T-1).

        With a KVCache the new keys and values are appended to it and the T queries attend to
        everything cached so far (they are its last T positions); key_padding_mask then covers
        the whole cache, (B, cache.length + T).
        """
        if x.ndim != 3 or x.shape[-1] != self.wq.in_features:
            raise ValueError(f"Attention: x must be (B, T, {self.wq.in_features}), got shape {x.shape}")
        B, T, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.wq(x).reshape(B, T, H, D).transpose(0, 2, 1, 3)       # (B, H, T, D)
        k = self.wk(x).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)     # (B, Hkv, T, D)
        v = self.wv(x).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)     # (B, Hkv, T, D)
        if self.positions == "rope":
            positions = np.arange(T) if positions is None else positions
            q = F.rope(q, positions, self.rope_theta)
            k = F.rope(k, positions, self.rope_theta)
        if cache is not None:
            k, v = cache.append(k, v)                                   # (B, Hkv, S, D), S = all cached
        y = F.attention(q, k, v, causal=self.causal, window=self.window, alibi_slopes=self.alibi_slopes,
                        key_padding_mask=key_padding_mask)              # (B, H, T, D)
        return self.wo(y.transpose(0, 2, 1, 3).reshape(B, T, C))

    def extra_repr(self):
        return (f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"positions={self.positions}, causal={self.causal}, window={self.window}")


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer, pre-allocated.

    k, v: (B, Hkv, max_len, D). append() writes the new tokens' keys and values after the
    cached ones and returns views of everything cached: inference only (no gradient flows).
    """

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype=np.float32):
        self.k = np.zeros((batch, n_kv_heads, max_len, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    def append(self, k, v):
        T = k.shape[2]
        if self.length + T > self.k.shape[2]:
            raise ValueError(f"KVCache: {self.length} cached + {T} new tokens exceed its size {self.k.shape[2]}")
        end = self.length + T
        self.k[:, :, self.length:end] = k.data if isinstance(k, Tensor) else k
        self.v[:, :, self.length:end] = v.data if isinstance(v, Tensor) else v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]
