"""Weight quantization (INT8 and INT4) and the integer matmul on quantized weights, in NumPy.

Schemes, for a weight W (N, K) (out_features, in_features):

    int8   per output channel:  d_n = max_k |W[n, k]| / 127,     q = round(W / d_n) in [-127, 127]
    q8_0   groups of 32 along K: d_ng = max |group| / 127,        q = round(W / d_ng) in [-127, 127]
    q4_0   groups of 32, symmetric: d_ng = max |group| / 7,       q = round(W / d_ng) in [-7, 7], stored + 8
    q4_1   groups of 32 with a min: m_ng = min group, d_ng = (max - min) / 15,
                                                                  q = round((W - m_ng) / d_ng) in [0, 15]

Dequantized: W ~ q * d (int8, q8_0, q4_0 after subtracting 8) or q * d + m (q4_1); each value is
within d / 2 of the original (round to nearest). Rounding is to nearest, ties to even (np.rint), and
q = round(w / d) is a true float32 division, exactly as the C++ kernel does (a multiplication by
1 / d would overflow to inf for a denormal d). A group that is not all zeros has d at least the
smallest float32 denormal (2^-149), so denormal values keep their sign and rough size.

INT4 packing (as llama.cpp's Q4_0): a group of 32 values takes 16 bytes; byte j holds value j in
its low nibble and value j + 16 in its high nibble. So q4 weights are uint8 (N, K / 2).

Activations are quantized on the fly, per row and per group of 32 along K, to int8 (dynamic
quantization, llama.cpp's Q8_0): x ~ xq * xd. For int8 per-channel weights K need not be a
multiple of 32; the last group is then shorter. A group holding NaN or +-inf quantizes to zeros with
xd = xs = NaN, so every output it reaches is NaN: a non-finite activation is never hidden. The
product of a row x and a weight row w is

    int8:  y = d_n * sum_g xd_g * sum_{k in g} xq_k wq_k
    q8_0, q4_0:   y = sum_g d_g xd_g * sum_{k in g} xq_k wq_k
    q4_1:  y = sum_g (d_g xd_g * sum_{k in g} xq_k wq_k + m_g * xs_g),   xs_g = xd_g * sum_{k in g} xq_k

where the inner sums are exact integers and only the outer sums are floating point.
"""
import numpy as np

GROUP = 32
SCHEMES = ("int8", "q8_0", "q4_0", "q4_1")
_LEVELS = {"int8": 127, "q8_0": 127, "q4_0": 7}


def check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {SCHEMES}, got {scheme!r}")


TINY = np.float32(2.0 ** -149)   # the smallest float32 denormal: the least scale of a group that is not all zeros


def _scale(amax, levels):
    """d = amax / levels in float32, at least TINY where amax > 0 (0 stays 0, NaN stays NaN)."""
    d = (amax / np.float32(levels)).astype(np.float32)
    return np.where(amax > 0, np.maximum(d, TINY), d).astype(np.float32)


def _divide(values, d):
    """values / d per group (d broadcasts over the last axis), 0 where d is 0 (an all-zero group)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, values / np.where(d > 0, d, np.float32(1)), np.float32(0))


def _groups(w, scheme):
    """w (N, K) float32 -> (N, G, 32) groups; int8 per channel is one group per row."""
    N, K = w.shape
    if scheme == "int8":
        return w.reshape(N, 1, K)
    if K % GROUP:
        raise ValueError(f"quantize: scheme {scheme!r} needs in_features to be a multiple of {GROUP}, got {K}; "
                         "use scheme 'int8' (per channel) for this matrix")
    return w.reshape(N, K // GROUP, GROUP)


def pack_int4(q):
    """(N, K) values in [0, 15] -> (N, K/2) uint8, llama.cpp's nibble order (see the module docstring)."""
    N, K = q.shape
    g = q.reshape(N, K // GROUP, 2, GROUP // 2).astype(np.uint8)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_int4(packed):
    """(N, K/2) uint8 -> (N, K) uint8 values in [0, 15]."""
    N, half = packed.shape
    g = packed.reshape(N, half // (GROUP // 2), GROUP // 2)
    return np.stack([g & 0x0F, g >> 4], axis=2).reshape(N, 2 * half)


def quantize_weights(w, scheme):
    """w (N, K) -> {"q": ..., "scale": ..., ["min": ...]} in the scheme's layout:
    int8: q int8 (N, K), scale (N,);  q8_0: q int8 (N, K), scale (N, K/32);
    q4_0: q uint8 (N, K/2), scale (N, K/32);  q4_1: as q4_0 plus min (N, K/32). Scales are float32."""
    check_scheme(scheme)
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"quantize: weights must be a 2-D float array, got {w.dtype} of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize: weights contain NaN or infinity")
    N, K = w.shape
    g = _groups(np.ascontiguousarray(w, dtype=np.float32), scheme)        # (N, G, L)
    if scheme == "q4_1":
        lo, hi = g.min(axis=-1), g.max(axis=-1)                            # (N, G)
        d = _scale(hi - lo, 15)
        q = np.clip(np.rint(_divide(g - lo[..., None], d[..., None])), 0, 15)
        return {"q": pack_int4(q.reshape(N, K)), "scale": d, "min": lo}
    levels = _LEVELS[scheme]
    d = _scale(np.abs(g).max(axis=-1), levels)                             # (N, G)
    q = np.clip(np.rint(_divide(g, d[..., None])), -levels, levels).reshape(N, K)
    if scheme == "q4_0":
        return {"q": pack_int4(q + 8), "scale": d}
    return {"q": q.astype(np.int8), "scale": d[:, 0] if scheme == "int8" else d}


def dequantize_weights(scheme, q, scale, min=None):
    """The float32 (N, K) matrix that quantized weights stand for."""
    check_scheme(scheme)
    if scheme == "int8":
        return q.astype(np.float32) * scale[:, None]
    values = q.astype(np.float32) if scheme == "q8_0" else unpack_int4(q).astype(np.float32)
    if scheme == "q4_0":
        values -= 8
    N, K = values.shape
    w = values.reshape(N, K // GROUP, GROUP) * scale[..., None]
    if scheme == "q4_1":
        w += min[..., None]
    return w.reshape(N, K)


def quantize_activations(x):
    """x (M, K) float32 -> xq int8 (M, K), xd (M, G) and xs (M, G) float32, G = ceil(K / 32).

    Per group of 32 along K (the last one shorter if K is not a multiple of 32):
    xd = max |x| / 127 (at least TINY unless the group is all zeros), xq = round(x / xd),
    xs = xd * sum(xq) (q4_1 needs it for its min term). A group with NaN or +-inf: xq = 0 and
    xd = xs = NaN.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    M, K = x.shape
    G = -(-K // GROUP)
    xq = np.empty((M, K), dtype=np.int8)
    xd = np.empty((M, G), dtype=np.float32)
    xs = np.empty((M, G), dtype=np.float32)
    for g in range(G):
        part = x[:, g * GROUP:(g + 1) * GROUP]
        amax = np.abs(part).max(axis=1)                                    # NaN if the group has a NaN
        finite = np.isfinite(amax)
        d = np.where(finite, _scale(np.where(finite, amax, 0), 127), np.float32(np.nan)).astype(np.float32)
        q = np.clip(np.rint(_divide(part, np.where(finite, d, 0)[:, None])), -127, 127)
        xq[:, g * GROUP:(g + 1) * GROUP] = q
        xd[:, g] = d
        with np.errstate(over="ignore"):                                   # d near 3e38 / 127: xs may be inf
            xs[:, g] = d * q.sum(axis=1, dtype=np.int32).astype(np.float32)
    return xq, xd, xs


def quant_matmul(x, scheme, q, scale, min=None, bias=None):
    """y (M, N) = x W^T (+ bias) for x (M, K) float32 and W quantized (see quantize_weights),
    with x quantized per group to int8 on the fly: the formula in the module docstring.
    int8 weights must lie in [-127, 127], as quantize_weights makes them (the native kernel's
    sign trick has no room for -128; minillm.quant checks checkpoints for it)."""
    check_scheme(scheme)
    xq, xd, xs = quantize_activations(x)
    M, K = xq.shape
    wq = q.astype(np.int32) if scheme in ("int8", "q8_0") else unpack_int4(q).astype(np.int32)
    if scheme == "q4_0":
        wq -= 8
    N = wq.shape[0]
    y = np.zeros((M, N), dtype=np.float64)
    for g in range(xd.shape[1]):
        cols = slice(g * GROUP, (g + 1) * GROUP)
        dot = xq[:, cols].astype(np.int32) @ wq[:, cols].T                 # (M, N) exact integers
        if scheme == "int8":
            y += dot * xd[:, g, None].astype(np.float64)
        else:
            y += dot * (xd[:, g, None].astype(np.float64) * scale[None, :, g])
            if scheme == "q4_1":
                y += xs[:, g, None].astype(np.float64) * min[None, :, g]
    if scheme == "int8":
        y *= scale[None, :]
    if bias is not None:
        y += bias
    with np.errstate(over="ignore"):                                       # beyond float32's range: inf
        return y.astype(np.float32)

