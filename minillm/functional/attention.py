"""attention and rope as autograd nodes, and the fixed position tables."""
import functools

import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ..kernels.reference.positions import alibi_slopes, sinusoidal_positions  # noqa: F401 (re-exported)
from ._checks import as_input, check_float, check_ndim


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


def attention(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None, bias=None, scale=None):
    """softmax(q k^T / sqrt(D) + alibi + mask) v, one node with a handwritten backward.

    q: (B, H, T, D); k, v: (B, Hkv, S, D) with H % Hkv == 0 (MHA: Hkv = H, GQA, MQA: Hkv = 1).
    Query i sits at position S - T + i (the last T positions, as with a KV cache).
    causal: keys after the query are hidden. window: keys at distance >= window are hidden.
    alibi_slopes: (H,), adds -slope * distance. key_padding_mask: (B, S) bool, True = keep.
    A query that sees no key returns zeros. Returns (B, H, T, D).
    bias: an additive score bias, (H, T, S) or (B, H, T, S), which may take a gradient (T5's relative
    positions); scale: the factor on q k^T in place of 1 / sqrt(D) (1.0: T5's unscaled attention).
    Either one runs minillm/functional/attention_bias.py (NumPy, no window or ALiBi there).
    """
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
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"attention: window must be a positive int or None, got {window!r}")
    if alibi_slopes is not None:
        alibi_slopes = np.asarray(alibi_slopes.data if isinstance(alibi_slopes, Tensor) else alibi_slopes)
        if alibi_slopes.shape != (H,):
            raise ValueError(f"attention: alibi_slopes has shape {alibi_slopes.shape}; it must be ({H},), one per head")
    if key_padding_mask is not None:
        key_padding_mask = np.asarray(key_padding_mask)
        if key_padding_mask.dtype != bool:
            raise TypeError(f"attention: key_padding_mask must be bool (True = keep), got {key_padding_mask.dtype}")
        if key_padding_mask.shape != (B, S):
            raise ValueError(f"attention: key_padding_mask has shape {key_padding_mask.shape}; it must be ({B}, {S})")
    if bias is not None or scale is not None:
        if window is not None or alibi_slopes is not None:
            raise ValueError("attention: bias and scale do not combine with window or alibi_slopes")
        from .attention_bias import attention_bias
        return attention_bias(q, k, v, bias, scale, causal, key_padding_mask)
    options = dict(causal=bool(causal), window=None if window is None else int(window),
                   alibi_slopes=alibi_slopes, key_padding_mask=key_padding_mask)
    return AttentionFn.apply(q, k, v, options)


class RoPEFn(Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save(cos, sin)
        return kernels.rope_forward(x, cos, sin)

    @staticmethod
    def backward(ctx, dy):
        return kernels.rope_backward(dy, *ctx.saved)


def rope(x, positions, theta=10000.0):
    """Rotary position embedding, rotate-half (GPT-NeoX / Llama) convention.

    x: (B, H, T, D) with D even; positions: (T,) or (B, T) ints. Pair (x_i, x_{i+D/2}) at
    position p is rotated by the angle p * theta^(-2i/D).
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
    cos, sin = _rope_angles(positions.tobytes(), positions.dtype.str, positions.shape, D, theta, x.dtype.str)
    return RoPEFn.apply(x, cos, sin)


@functools.lru_cache(maxsize=64)
def _rope_angles(position_bytes, position_dtype, shape, D, theta, dtype):
    """kernels.rope_angles, cached: training repeats one arange every step, and the 2 * n_layer
    rope calls of a decode step share their positions. The arrays are never written to."""
    positions = np.frombuffer(position_bytes, dtype=position_dtype).reshape(shape)
    cos, sin = kernels.rope_angles(positions, D, theta, np.dtype(dtype))
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin
