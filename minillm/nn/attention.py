"""Multi-head self-attention (MHA, GQA, MQA) with RoPE, ALiBi or no positions in the layer."""
import numpy as np

from .. import functional as F
from .. import kernels
from ..autograd import Tensor
from .caches import LinearAttentionState, SinkKVCache
from .config import BlockConfig
from .fused import FusedProjection
from .layers import Linear
from .module import Module

# Up to this many new queries attend to a KV cache in place (kernels.kv_attention_forward, one row of
# scores at a time); more (a prompt) go to the tiled attention_forward on the cache's copied prefix.
KV_ATTENTION_MAX_T = 8


class Attention(Module):
    """softmax(q k^T / sqrt(D) + mask) v over n_heads query heads sharing n_kv_heads key/value heads.

    Built from a BlockConfig: d_model, n_heads, n_kv_heads (= n_heads is MHA, 1 is MQA, anything
    between that divides n_heads is GQA), positions ("rope" rotates q and k, "alibi" biases the
    scores, None leaves positions to the model), causal, window, rope_theta, bias, init_std.
    """

    def __init__(self, config, *, rng=None, dtype=np.float32):
        if not isinstance(config, BlockConfig):
            raise TypeError(f"Attention: config must be an nn.BlockConfig (e.g. nn.BlockConfig(d_model=64, "
                            f"n_heads=4)), got {type(config).__name__}")
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.positions, self.causal, self.window, self.rope_theta = c.positions, c.causal, c.window, c.rope_theta
        self.rope_scaling = c.rope_scaling
        self.attention, self.pattern = c.attention, c.attention_pattern     # long context: docs/long_context.md
        self.alibi_slopes = F.alibi_slopes(c.n_heads) if c.positions == "alibi" else None
        kv_dim = c.kv_heads * c.head_dim
        init = dict(bias=c.bias, init_std=c.init_std, rng=rng, dtype=dtype)
        self.wq = Linear(c.d_model, c.d_model, **init)
        self.wk = Linear(c.d_model, kv_dim, **init)
        self.wv = Linear(c.d_model, kv_dim, **init)
        self.wo = Linear(c.d_model, c.d_model, **init)
        self.qkv = FusedProjection()          # [W_q; W_k; W_v] as one matrix, for forward and infer

    def forward(self, x, positions=None, key_padding_mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C). positions: (T,) or (B, T) ints for RoPE (default 0..T-1).

        Three nodes: q, k and v projected by one matmul (F.fused_linear), the heads' attention with
        RoPE (F.packed_attention), the output projection. With a KV cache, or quantized projections,
        it runs composed() instead: the same layer made of the small ops.
        """
        self._check_input(x)
        projections = (self.wq, self.wk, self.wv)
        if cache is not None or not all(isinstance(m, Linear) for m in projections) or self._long_context:
            return self.composed(x, positions, key_padding_mask, cache)
        weights = [m.weight for m in projections]
        biases = None if self.wq.bias is None else [m.bias for m in projections]
        qkv = F.fused_linear(x, weights, biases, stacked=self.qkv.stacked(weights, biases))   # (B, T, (H + 2 Hkv) D)
        y = F.packed_attention(qkv, self.n_heads, self.n_kv_heads, positions,
                               self.rope_theta if self.positions == "rope" else None, self.causal, self.window,
                               self.alibi_slopes, key_padding_mask, rope_scaling=self.rope_scaling)   # (B, T, C)
        return self.wo(y)

    def composed(self, x, positions=None, key_padding_mask=None, cache=None):
        """forward as the composition of the small nodes (three linears, reshapes, rope, attention):
        the reference the fused nodes are held to, and the path of a KV cache (whose keys and
        values are constants: no gradient flows through a cache).

        With a KVCache the new keys and values are appended to it and the T queries attend to
        everything cached so far (they are its last T positions); key_padding_mask then covers
        the whole cache, (B, cache.length + T).
        """
        self._check_input(x)
        B, T, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.wq(x).reshape(B, T, H, D).transpose(0, 2, 1, 3)       # (B, H, T, D)
        k = self.wk(x).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)     # (B, Hkv, T, D)
        v = self.wv(x).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)     # (B, Hkv, T, D)
        if self.positions == "rope":
            positions = np.arange(T) if positions is None else positions
            q = F.rope(q, positions, self.rope_theta, self.rope_scaling)
            k = F.rope(k, positions, self.rope_theta, self.rope_scaling)
        if cache is not None and not isinstance(cache, (LinearAttentionState, SinkKVCache)):
            k, v = cache.append(k, v)                                   # (B, Hkv, S, D), S = all cached
        elif cache is not None:
            raise ValueError("Attention: a linear-attention state or a sink cache is for infer() (generation)")
        if self._long_context:
            self._check_long_context(key_padding_mask)
            y = (F.linear_attention(q, k, v, causal=self.causal) if self.attention == "linear"
                 else F.attention(q, k, v, pattern=self.pattern))
        else:
            y = F.attention(q, k, v, causal=self.causal, window=self.window, alibi_slopes=self.alibi_slopes,
                            key_padding_mask=key_padding_mask)          # (B, H, T, D)
        return self.wo(y.transpose(0, 2, 1, 3).reshape(B, T, C))

    @property
    def _long_context(self):
        return self.attention == "linear" or self.pattern is not None

    def _check_long_context(self, key_padding_mask):
        if key_padding_mask is not None:
            raise ValueError("Attention: linear and sparse attention take no key_padding_mask (generate prompts "
                             "of one length, or one at a time)")

    def _check_input(self, x):
        if x.ndim != 3 or x.shape[-1] != self.wq.in_features:
            raise ValueError(f"Attention: x must be (B, T, {self.wq.in_features}), got shape {x.shape}")

    def infer(self, x, positions=None, key_padding_mask=None, cache=None):
        """forward on arrays, without the tape: x (B, T, C) -> (B, T, C), q, k and v from one matmul."""
        self._check_input(x)
        B, T, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        projections = (self.wq, self.wk, self.wv)
        biases = None if self.wq.bias is None else [m.bias for m in projections]
        if any(hasattr(m, "lora") for m in projections):                        # LoRA layers (nn/lora.py): each
            qkv = np.concatenate([m.infer(x) for m in projections], axis=-1)    # with its adapter's update
        else:
            qkv = self.qkv(x, [m.weight for m in projections], biases)          # (B, T, (H + 2 Hkv) D)
        heads = qkv.reshape(B, T, H + 2 * Hkv, D).transpose(0, 2, 1, 3)        # (B, H + 2 Hkv, T, D)
        q, k, v = heads[:, :H], heads[:, H:H + Hkv], heads[:, H + Hkv:]
        if isinstance(cache, SinkKVCache):
            y = self._infer_with_sinks(q, k, v, positions, key_padding_mask, cache)
            return self.wo.infer(y.transpose(0, 2, 1, 3).reshape(B, T, C))
        if self.positions == "rope":
            cos, sin = F.rope_tables(np.arange(T) if positions is None else positions, D, self.rope_theta, x.dtype,
                                     self.rope_scaling)
            q, k = kernels.rope_forward(q, cos, sin), kernels.rope_forward(k, cos, sin)
        options = (self.causal, self.window, self.alibi_slopes, key_padding_mask)
        if self._long_context:
            self._check_long_context(key_padding_mask)
            y = self._infer_long_context(q, k, v, cache)
        elif cache is not None and hasattr(cache, "attend"):                     # a paged cache (minillm/serve):
            y = cache.attend(q, k, v, *options)                                 # it stores k, v and reads its blocks
        elif cache is not None and T <= KV_ATTENTION_MAX_T:                      # a decode step: read the cache in place
            cache.append(k, v)
            y = kernels.kv_attention_forward(q, cache.k, cache.v, cache.length, *options)
        else:                                                                   # a prompt: the tiled kernel
            if cache is not None:
                k, v = cache.append(k, v)                                       # (B, Hkv, S, D)
            y, _ = kernels.attention_forward(q, k, v, *options)                 # (B, H, T, D)
        return self.wo.infer(y.transpose(0, 2, 1, 3).reshape(B, T, C))

    def _infer_long_context(self, q, k, v, cache):
        """Linear attention (through its state when generating) or sparse attention, on arrays."""
        if self.attention == "linear":
            if cache is None:
                cache = LinearAttentionState(q.shape[0], self.n_heads, self.head_dim, dtype=q.dtype)
            elif not isinstance(cache, LinearAttentionState):
                raise ValueError("Attention: linear attention generates with an nn.LinearAttentionState "
                                 "(model.new_caches gives them)")
            return cache.step(q, k, v).astype(q.dtype, copy=False)
        if cache is not None:
            k, v = cache.append(k, v)
        y, _ = kernels.sparse_attention_forward(q, k, v, *self.pattern.indices(q.shape[2], k.shape[2]))
        return y

    def _infer_with_sinks(self, q, k, v, positions, key_padding_mask, cache):
        """Attention over a SinkKVCache: keys rotated at their places in the cache (0..L-1), the T new
        queries at the last T of them, whatever positions the caller counts (StreamingLLM)."""
        if key_padding_mask is not None or self._long_context or self.positions == "alibi":
            raise ValueError("Attention: a sink cache needs softmax attention with RoPE or no positions in the "
                             "block, and no key_padding_mask")
        T, D = q.shape[2], self.head_dim
        keys, values = cache.append(k, v)                                       # (B, Hkv, L, D), before RoPE
        if self.positions == "rope":
            L = keys.shape[2]
            cos, sin = F.rope_tables(np.arange(L - T, L), D, self.rope_theta, q.dtype, self.rope_scaling)
            q = kernels.rope_forward(np.ascontiguousarray(q), cos, sin)
            keys = cache.rotated_keys(keys, D, self.rope_theta, self.rope_scaling)
        y, _ = kernels.attention_forward(np.ascontiguousarray(q), keys, values, self.causal, self.window)
        return y

    def extra_repr(self):
        return (f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"positions={self.positions}, causal={self.causal}, window={self.window}")


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer, pre-allocated.

    k, v: (B, Hkv, max_len, D). append() writes the new tokens' keys and values after the
    cached ones and returns views of everything cached: inference only (no gradient flows).
    """

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype=np.float32):
        # written through now: np.zeros would leave the pages to be faulted in (and zeroed by the
        # kernel) one by one as decode steps first touch them, inside the token loop
        self.k = np.empty((batch, n_kv_heads, max_len, head_dim), dtype=dtype)
        self.v = np.empty_like(self.k)
        self.k.fill(0)
        self.v.fill(0)
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
