"""NF4, the QLoRA paper's 4-bit NormalFloat (Dettmers et al. 2023), with double quantization, in NumPy.

A weight W (N, K), K a multiple of 64, is cut into blocks of BLOCK = 64 values along K. Each block b
keeps its absmax c_b = max |W_block| and each value its nearest level of the 16 NormalFloat levels:

    w  ~  LEVELS[q] * c_b,     q in [0, 16),  LEVELS: quantiles of N(0, 1) scaled to [-1, 1], 0 exact

(LEVELS are the paper's and bitsandbytes' values, below.) Double quantization: the absmaxes, one
float32 per 64 weights (0.5 bit each), are themselves stored in 8 bits. The blocks are numbered
row-major over the whole tensor (block n * K/64 + j) and cut into groups of GROUP2 = 256; a group
keeps the largest of its absmaxes s_g in float32 and each block an 8-bit logarithmic code
(an unsigned 8-bit float with a 4-bit fraction of the exponent):

    c_b  ~  s_g * 2^(-code_b / 16),   code_b = round(-16 log2(c_b / s_g)) in [0, 255]

so a block's absmax is within 2^(1/32) (2.2%) of its own, over 16 octaves below the group's
largest (bitsandbytes uses an 8-bit dynamic code with a mean offset instead; the size is the same).
That is 4 + 8/64 + 32/(64 * 256) = 4.127 bits per weight.

Layout (minillm's): q uint8 (N, K/2), byte j of a block holding value j in its low nibble and value
j + 32 in its high nibble; scale uint8 (N, K/64), the absmax codes; scale2 float32 (ceil(N K/64 / 256),),
the group maxima. Dequantized, value k of block b is LEVELS[q] * (scale2[g] * EXP2[code]) in float32,
with EXP2[c] = float32(2^(-c/16)): the native kernel (csrc/nf4.cpp) computes the same products.
The matmul is y = x dequantize(W)^T (+ bias) in float32: x is not quantized.
"""
import numpy as np

BLOCK = 64
GROUP2 = 256
LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                   -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                   0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                   0.7229568362236023, 1.0], dtype=np.float32)
EXP2 = np.exp2(-np.arange(256, dtype=np.float64) / 16).astype(np.float32)    # a code's factor 2^(-c/16)
_MIDPOINTS = (LEVELS[1:] + LEVELS[:-1]) / 2


def check_nf4_shape(N, K, where="nf4"):
    if K % BLOCK:
        raise ValueError(f"{where}: NF4 needs in_features to be a multiple of {BLOCK}, got {K}")


def pack_nf4(q):
    """(N, K) values in [0, 16) -> (N, K/2) uint8: byte j of each block of 64 holds values j and j + 32."""
    N, K = q.shape
    g = q.reshape(N, K // BLOCK, 2, BLOCK // 2).astype(np.uint8)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_nf4(packed):
    """(N, K/2) uint8 -> (N, K) level indices in [0, 16)."""
    N, half = packed.shape
    g = packed.reshape(N, half // (BLOCK // 2), BLOCK // 2)
    return np.stack([g & 0x0F, g >> 4], axis=2).reshape(N, 2 * half)


def block_scales(scale, scale2):
    """The dequantized absmax of every block, float32 (N, K/64): scale2[group] * EXP2[code]."""
    N, Kb = scale.shape
    group = np.arange(N * Kb).reshape(N, Kb) // GROUP2
    return scale2[group] * EXP2[scale]


def quantize_nf4(w):
    """w (N, K) float -> {"q": uint8 (N, K/2), "scale": uint8 (N, K/64), "scale2": float32 (G2,)}."""
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"quantize nf4: weights must be a 2-D float array, got {w.dtype} of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize nf4: weights contain NaN or infinity")
    N, K = w.shape
    check_nf4_shape(N, K, "quantize nf4")
    blocks = np.ascontiguousarray(w, dtype=np.float32).reshape(N, K // BLOCK, BLOCK)
    absmax = np.abs(blocks).max(axis=-1).reshape(-1)                         # (N * K/64,)
    n_groups = -(-absmax.size // GROUP2)
    padded = np.zeros(n_groups * GROUP2, np.float32)
    padded[:absmax.size] = absmax
    scale2 = padded.reshape(n_groups, GROUP2).max(axis=1)                     # (G2,)
    ratio = absmax / np.repeat(np.where(scale2 > 0, scale2, 1), GROUP2)[:absmax.size]
    with np.errstate(divide="ignore"):
        code = np.clip(np.rint(-16 * np.log2(ratio)), 0, 255)                 # a zero block: 255, its values 0
    scale = code.astype(np.uint8).reshape(N, K // BLOCK)
    c = block_scales(scale, scale2)[..., None]                                # (N, K/64, 1)
    normalized = np.where(c > 0, blocks / np.where(c > 0, c, 1), 0)
    q = np.searchsorted(_MIDPOINTS, normalized.reshape(N, K))                 # the nearest level
    return {"q": pack_nf4(q), "scale": scale, "scale2": scale2.astype(np.float32)}


def dequantize_nf4(q, scale, scale2):
    """The float32 (N, K) weight: LEVELS[q] * block scale."""
    values = LEVELS[unpack_nf4(q)]                                            # (N, K)
    N, K = values.shape
    return (values.reshape(N, K // BLOCK, BLOCK) * block_scales(scale, scale2)[..., None]).reshape(N, K)


def nf4_matmul(x, q, scale, scale2, bias=None):
    """y (M, N) = x dequantize(W)^T (+ bias), x (M, K) float32."""
    y = np.asarray(x, np.float32) @ dequantize_nf4(q, scale, scale2).T
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)
