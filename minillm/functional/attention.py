"""attention and rope as autograd nodes, and the fixed position tables."""
import functools

import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ..kernels.reference.positions import alibi_slopes, sinusoidal_positions  # noqa: F401 (re-exported)
from ._checks import as_input, check_float, check_ndim
from .rope_scaling import cached_scaled_rope_angles


class AttentionFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, options):
        out, lse = kernels.attention_forward(q, k, v, **options)
        ctx.save(q, k, v, out, lse, options)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, options = ctx.saved
        return kernels.attention_backward(dout, q, k, v, out, lse, **options)


def attention(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None, pattern=None, bias=None,
              scale=None):
    """softmax(q k^T / sqrt(D) + alibi + mask) v, one node with a handwritten backward.

    q: (B, H, T, D); k, v: (B, Hkv, S, D) with H % Hkv == 0 (MHA: Hkv = H, GQA, MQA: Hkv = 1).
    Query i sits at position S - T + i (the last T positions, as with a KV cache).
    causal: keys after the query are hidden. window: keys at distance >= window are hidden.
    alibi_slopes: (H,), adds -slope * distance. key_padding_mask: (B, S) bool, True = keep; or
    (B, T, S), a mask per query (packed examples: True where query and key are in the same one),
    which runs the NumPy reference on both backends.
    A query that sees no key returns zeros. Returns (B, H, T, D).
    pattern: an F.AttentionPattern (dilated, strided, block_sparse; it carries its own causality):
    F.sparse_attention, whose work is the visible pairs; it takes none of the other options.
    bias: an additive score bias, (H, T, S) or (B, H, T, S), which may take a gradient (T5's relative
    positions); scale: the factor on q k^T in place of 1 / sqrt(D) (1.0: T5's unscaled attention).
    Either one runs minillm/functional/attention_bias.py (NumPy, no window or ALiBi there).
    """
    if pattern is not None:
        if window is not None or alibi_slopes is not None or key_padding_mask is not None or bias is not None \
                or scale is not None:
            raise ValueError("attention: pattern (sparse attention) cannot be combined with window, alibi_slopes, "
                             "key_padding_mask, bias or scale; express the window in the pattern")
        from .sparse_attention import sparse_attention
        return sparse_attention(q, k, v, pattern)
    q, k, v = as_input(q), as_input(k), as_input(v)
    check_float("attention", q=q, k=k, v=v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_ndim("attention", name, a, ndim=4)
    B, H, T, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"attention: k has shape {k.shape} but v has shape {v.shape}; they must match")
    Bk, Hkv, S, Dk = k.shape
    if Bk != B or Dk != D:
        raise ValueError(f"attention: q has shape {q.shape} and k {k.shape}; batch (axis 0) and head dim "
                         "(axis 3) must match")
    if H % Hkv != 0:
        raise ValueError(f"attention: q has {H} heads but k has {Hkv}; n_heads must be a multiple of n_kv_heads")
    options = _attention_options("attention", B, H, T, S, causal, window, alibi_slopes, key_padding_mask)
    if bias is not None or scale is not None:
        if window is not None or alibi_slopes is not None:
            raise ValueError("attention: bias and scale do not combine with window or alibi_slopes")
        from .attention_bias import attention_bias
        return attention_bias(q, k, v, bias, scale, causal, options["key_padding_mask"])
    return AttentionFn.apply(q, k, v, options)


class PackedAttentionFn(Function):
    """Multi-head attention on packed projections, one node: qkv (B, T, (H + 2 Hkv) D) -> y (B, T, H D).

    forward:   q, k, v = the head blocks of qkv as (B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D)
               q, k    = rope(q), rope(k)                        (when rotary tables are given)
               out     = attention(q, k, v)                      (flash-style, with its lse)
               y       = out with the heads side by side again   (B, T, H D)
    backward:  the same steps in reverse: dout from dy, (dq, dk, dv) from attention's backward,
               dq and dk rotated back, and the three packed into dqkv like qkv.
    The copies between the packed and per-head layouts are the only ones (the kernels want each
    head contiguous); the tape holds one node where the composition holds a dozen.
    """

    @staticmethod
    def forward(ctx, qkv, heads, rope_tables, options):
        H, Hkv = heads
        B, T, width = qkv.shape
        D = width // (H + 2 * Hkv)
        blocks = qkv.reshape(B, T, H + 2 * Hkv, D).transpose(0, 2, 1, 3)       # (B, H + 2 Hkv, T, D), a view
        q, k, v = (np.ascontiguousarray(blocks[:, a:b]) for a, b in ((0, H), (H, H + Hkv), (H + Hkv, H + 2 * Hkv)))
        if rope_tables is not None:
            q, k = kernels.rope_forward(q, *rope_tables), kernels.rope_forward(k, *rope_tables)
        out, lse = kernels.attention_forward(q, k, v, **options)               # (B, H, T, D)
        ctx.save(q, k, v, out, lse, heads, rope_tables, options)
        return out.transpose(0, 2, 1, 3).reshape(B, T, H * D)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, out, lse, (H, Hkv), rope_tables, options = ctx.saved
        B, _, T, D = q.shape
        dout = np.ascontiguousarray(dy.reshape(B, T, H, D).transpose(0, 2, 1, 3))
        dq, dk, dv = kernels.attention_backward(dout, q, k, v, out, lse, **options)
        if rope_tables is not None:
            dq, dk = kernels.rope_backward(dq, *rope_tables), kernels.rope_backward(dk, *rope_tables)
        dqkv = np.empty((B, T, H + 2 * Hkv, D), dtype=dy.dtype)
        dqkv[:, :, :H], dqkv[:, :, H:H + Hkv], dqkv[:, :, H + Hkv:] = (g.transpose(0, 2, 1, 3) for g in (dq, dk, dv))
        return dqkv.reshape(B, T, -1)


def packed_attention(qkv, n_heads, n_kv_heads, positions=None, rope_theta=None, causal=True, window=None,
                     alibi_slopes=None, key_padding_mask=None, rope_scaling=None):
    """Self-attention of the heads packed in qkv, one node (see PackedAttentionFn).

    qkv: (B, T, (n_heads + 2 n_kv_heads) D), the q, k and v projections side by side as
    F.fused_linear makes them. rope_theta: rotate q and k at positions (T,) or (B, T) (default
    0..T-1); None: no rotation. rope_scaling: an F.RopeScaling (None: plain RoPE). The rest as in
    attention(). Returns (B, T, n_heads D).
    """
    qkv = as_input(qkv)
    check_float("packed_attention", qkv=qkv)
    check_ndim("packed_attention", "qkv", qkv, ndim=3)
    B, T, width = qkv.shape
    if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads or width % (n_heads + 2 * n_kv_heads):
        raise ValueError(f"packed_attention: qkv has shape {qkv.shape}; its last axis must hold n_heads "
                         f"{n_heads} + 2 n_kv_heads {n_kv_heads} heads of one size, n_heads a multiple of n_kv_heads")
    D = width // (n_heads + 2 * n_kv_heads)
    tables = None
    if rope_theta is not None:
        if D % 2:
            raise ValueError(f"packed_attention: RoPE needs an even head dim, got D = {D}")
        positions = np.arange(T) if positions is None else np.asarray(positions)
        if not np.issubdtype(positions.dtype, np.integer) or positions.shape not in ((T,), (B, T)):
            raise ValueError(f"packed_attention: positions must be ints of shape ({T},) or ({B}, {T}), got "
                             f"{positions.dtype} {positions.shape}")
        tables = rope_tables(positions, D, rope_theta, qkv.dtype, rope_scaling)
    options = _attention_options("packed_attention", B, n_heads, T, T, causal, window, alibi_slopes, key_padding_mask)
    return PackedAttentionFn.apply(qkv, (n_heads, n_kv_heads), tables, options)


def _attention_options(fn, B, H, T, S, causal, window, alibi_slopes, key_padding_mask):
    """The attention kernels' keyword options, checked."""
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"{fn}: window must be a positive int or None, got {window!r}")
    if alibi_slopes is not None:
        alibi_slopes = np.asarray(alibi_slopes.data if isinstance(alibi_slopes, Tensor) else alibi_slopes)
        if alibi_slopes.shape != (H,):
            raise ValueError(f"{fn}: alibi_slopes has shape {alibi_slopes.shape}; it must be ({H},), one per head")
    if key_padding_mask is not None:
        key_padding_mask = np.asarray(key_padding_mask)
        if key_padding_mask.dtype != bool:
            raise TypeError(f"{fn}: key_padding_mask must be bool (True = keep), got {key_padding_mask.dtype}")
        if key_padding_mask.shape not in ((B, S), (B, T, S)):
            raise ValueError(f"{fn}: key_padding_mask has shape {key_padding_mask.shape}; it must be ({B}, {S}) "
                             f"or, one row per query, ({B}, {T}, {S})")
    return dict(causal=bool(causal), window=None if window is None else int(window),
                alibi_slopes=alibi_slopes, key_padding_mask=key_padding_mask)


class RoPEFn(Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save(cos, sin)
        return kernels.rope_forward(x, cos, sin)

    @staticmethod
    def backward(ctx, dy):
        return kernels.rope_backward(dy, *ctx.saved)


def rope(x, positions, theta=10000.0, scaling=None):
    """Rotary position embedding, rotate-half (GPT-NeoX / Llama) convention.

    x: (B, H, T, D) with D even; positions: (T,) or (B, T) ints. Pair (x_i, x_{i+D/2}) at
    position p is rotated by the angle p * theta^(-2i/D). scaling: an F.RopeScaling (linear,
    dynamic, yarn, llama3: functional/rope_scaling.py) changes those frequencies; None: plain RoPE.
    """
    x = as_input(x)
    positions = np.asarray(positions.data if isinstance(positions, Tensor) else positions)
    check_float("rope", x=x)
    check_ndim("rope", "x", x, ndim=4)
    B, H, T, D = x.shape
    if D % 2:
        raise ValueError(f"rope: x has shape {x.shape}; the head dim D = {D} must be even")
    if not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(f"rope: positions must be integers, got dtype {positions.dtype}")
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(f"rope: positions has shape {positions.shape}; it must be ({T},) or ({B}, {T})")
    if not theta > 0:
        raise ValueError(f"rope: theta must be positive, got {theta}")
    cos, sin = rope_tables(positions, D, theta, x.dtype, scaling)
    return RoPEFn.apply(x, cos, sin)


def rope_tables(positions, head_dim, theta, dtype, scaling=None):
    """(cos, sin) of kernels.rope_angles for integer positions (T,) or (B, T), read-only and cached:
    training repeats one arange every step, and the 2 * n_layer rope calls of a decode step share
    their positions. scaling: an F.RopeScaling, or None for plain RoPE."""
    positions = np.asarray(positions)
    if scaling is not None and scaling.rope_type != "default":
        return cached_scaled_rope_angles(positions.tobytes(), positions.dtype.str, positions.shape, head_dim,
                                         float(theta), scaling, np.dtype(dtype).str)
    return _rope_angles(positions.tobytes(), positions.dtype.str, positions.shape, head_dim, theta,
                        np.dtype(dtype).str)


@functools.lru_cache(maxsize=64)
def _rope_angles(position_bytes, position_dtype, shape, D, theta, dtype):
    """kernels.rope_angles, cached by value (see rope_tables). The arrays are never written to."""
    positions = np.frombuffer(position_bytes, dtype=position_dtype).reshape(shape)
    cos, sin = kernels.rope_angles(positions, D, theta, np.dtype(dtype))
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin
