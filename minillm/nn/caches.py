"""Caches for long generation: a recurrent state for linear attention and a KV cache with attention sinks.

LinearAttentionState: linear attention's running sums S = sum_j phi(k_j) v_j^T (B, H, D, E) and
z = sum_j phi(k_j) (B, H, D): decoding costs O(1) memory and time per token, whatever the length.

SinkKVCache (StreamingLLM, Xiao et al. 2024): the keys and values of the first n_sink tokens (the
"attention sinks" that softmax attention leans on) and of the last `window` tokens. Keys are kept
before RoPE and rotated at their place in the cache on every step (sinks at 0..n_sink-1, the window
after them, the new tokens last), so positions never pass n_sink + window and generation runs past
the trained context at constant memory. n_sink = 0 is the plain rolling window, which is what
StreamingLLM shows to fail once the first tokens leave the cache.
"""
import numpy as np

from .. import kernels
from ..functional.sparse_attention import elu_plus_one, expand_kv


class LinearAttentionState:
    """The running sums of causal linear attention, for one layer (see the module docstring)."""

    def __init__(self, batch, n_heads, head_dim, v_dim=None, dtype=np.float32, eps=1e-6):
        v_dim = head_dim if v_dim is None else v_dim
        self.s = np.zeros((batch, n_heads, head_dim, v_dim), dtype=dtype)   # sum phi(k) v^T
        self.z = np.zeros((batch, n_heads, head_dim), dtype=dtype)           # sum phi(k)
        self.eps, self.length = eps, 0

    def step(self, q, k, v):
        """Outputs (B, H, T, E) of T new tokens (q (B, H, T, D), k and v (B, Hkv, T, .)), then absorb them.

        Within the new tokens the kernel's causal sums (eps = 0) give numerator and denominator; the
        state adds what came before: num = phi(q) S + num_new, den = phi(q) . z + den_new + eps."""
        group = q.shape[1] // k.shape[1]
        fq = elu_plus_one(q).astype(self.s.dtype)
        fk = elu_plus_one(expand_kv(k, group)).astype(self.s.dtype)
        v = expand_kv(v, group).astype(self.s.dtype)
        out_new, den_new = kernels.linear_attention_forward(fq, fk, v, True, 0.0)
        num = fq @ self.s + out_new * den_new[..., None]                      # (B, H, T, E)
        den = np.einsum("bhtd,bhd->bht", fq, self.z) + den_new + self.eps
        self.s += np.swapaxes(fk, -1, -2) @ v
        self.z += fk.sum(axis=2)
        self.length += q.shape[2]
        return num / den[..., None]


class SinkKVCache:
    """Keys (before RoPE) and values of n_sink first tokens and the last `window`, for one layer."""

    def __init__(self, batch, n_kv_heads, n_sink, window, head_dim, dtype=np.float32):
        if n_sink < 0 or window < 1:
            raise ValueError(f"SinkKVCache: n_sink must be >= 0 and window >= 1, got {n_sink} and {window}")
        self.n_sink, self.window = n_sink, window
        self.k = np.zeros((batch, n_kv_heads, n_sink + window, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0            # tokens held now (<= n_sink + window): the next token's position
        self.seen = 0              # tokens seen in all

    @property
    def capacity(self):
        return self.n_sink + self.window

    def append(self, k, v):
        """(keys, values) (B, Hkv, length + T, D) the T new tokens attend to: what is held, then them.
        Afterwards only the sinks and the last `window` of them are kept."""
        keys = np.concatenate([self.k[:, :, :self.length], k], axis=2)
        values = np.concatenate([self.v[:, :, :self.length], v], axis=2)
        n = keys.shape[2]
        if n > self.capacity:
            keep = np.r_[0:self.n_sink, n - self.window:n]
        else:
            keep = np.arange(n)
        self.k[:, :, :len(keep)] = keys[:, :, keep]
        self.v[:, :, :len(keep)] = values[:, :, keep]
        self.length = len(keep)
        self.seen += k.shape[2]
        return keys, values

    def rotated_keys(self, keys, head_dim, theta, scaling):
        """keys (B, Hkv, L, D) turned by RoPE at their places in the cache, 0..L-1."""
        from ..functional import rope_tables
        cos, sin = rope_tables(np.arange(keys.shape[2]), head_dim, theta, keys.dtype, scaling)
        return kernels.rope_forward(np.ascontiguousarray(keys), cos, sin)
