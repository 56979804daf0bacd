"""GGML's block formats mapped onto minillm's quantized layouts, and back.

A GGML tensor of shape (N, K) (N rows of K values; GGUF lists it as [K, N]) in a block format is
N rows of K / 32 blocks, each block a few bytes of scale followed by 32 quantized values:

    Q8_0  34 bytes: d (fp16), q int8[32]                  w = q * d
    Q4_0  18 bytes: d (fp16), nibbles uint8[16]          w = (nibble - 8) * d
    Q4_1  20 bytes: d (fp16), m (fp16), nibbles uint8[16]  w = nibble * d + m

Byte j of a 4-bit block holds value j in its low nibble and value j + 16 in its high nibble: the
order minillm's q4_0 / q4_1 already use (minillm/kernels/reference/quant.py). So the mapping is a
regrouping: the quants of all blocks of a row, side by side, are minillm's q (N, K) int8 or
(N, K / 2) uint8, and the fp16 scales (and mins), widened to float32 (exactly), are its scale and
min (N, K / 32). minillm's q4_0 stores nibble = value + 8 and subtracts 8 too, so GGML's range
[-8, 7] is its range. Dequantized, both compute q * d (+ m) in float32, so the weights are equal
bit for bit. The one value minillm's kernels cannot take is int8 -128 in Q8_0 (the AVX2 sign trick
has no room for +128; GGML's own quantizer never writes it): such a tensor is dequantized instead.

The regrouping copies the quants out of the interleaved blocks (a strided view cannot feed the
kernels), so a loaded model holds its own copy and needs nothing of the file after loading.
"""
import numpy as np

from ..kernels.reference.quant import GROUP

BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
SCHEME_OF = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}
GGML_OF = {scheme: ggml for ggml, scheme in SCHEME_OF.items()}


def _fp16(blocks, start):
    """The fp16 field at byte `start` of every block, (N, G) float32 (exact: fp16 is a subset)."""
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0].astype(np.float32)


def blocks_to_arrays(raw, ggml_type, K):
    """raw (N, K / 32 * block bytes) uint8 -> {"q", "scale"[, "min"]} in minillm's layout for the
    scheme SCHEME_OF[ggml_type] (see the module docstring)."""
    if ggml_type not in BLOCK_BYTES:
        raise ValueError(f"ggml blocks: {ggml_type} has no minillm layout; known: {sorted(BLOCK_BYTES)}")
    size = BLOCK_BYTES[ggml_type]
    N = raw.shape[0]
    if K % GROUP or raw.shape != (N, K // GROUP * size):
        raise ValueError(f"ggml blocks: a {ggml_type} tensor of {K} columns needs {K // GROUP * size} bytes per row, "
                         f"got an array of shape {raw.shape}")
    blocks = raw.view(np.uint8).reshape(N, K // GROUP, size)                       # (N, G, block bytes)
    arrays = {"scale": _fp16(blocks, 0)}
    if ggml_type == "Q8_0":
        arrays["q"] = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(N, K)
    elif ggml_type == "Q4_0":
        arrays["q"] = np.ascontiguousarray(blocks[..., 2:]).reshape(N, K // 2)
    else:
        arrays["min"] = _fp16(blocks, 2)
        arrays["q"] = np.ascontiguousarray(blocks[..., 4:]).reshape(N, K // 2)
    return arrays


def fits_fp16(values):
    """True when every value survives a round trip through fp16 unchanged."""
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def arrays_to_blocks(scheme, q, scale, min=None):
    """The inverse of blocks_to_arrays: minillm's arrays -> raw (N, K / 32 * block bytes) uint8.
    Scales (and mins) must be exact in fp16 (fits_fp16), else the blocks would not stand for the
    same weights; requantize the float weights instead."""
    if scheme not in GGML_OF:
        raise ValueError(f"ggml blocks: scheme {scheme!r} has no GGML block format; known: {sorted(GGML_OF)}")
    for name, values in (("scale", scale), ("min", min)):
        if values is not None and not fits_fp16(values):
            raise ValueError(f"ggml blocks: the {name}s of this {scheme} tensor are not exact in fp16")
    N, G = scale.shape
    parts = [scale.astype(np.float16).view(np.uint8).reshape(N, G, 2)]
    if scheme == "q4_1":
        parts.append(min.astype(np.float16).view(np.uint8).reshape(N, G, 2))
    parts.append(np.ascontiguousarray(q).view(np.uint8).reshape(N, G, -1))
    return np.concatenate(parts, axis=-1).reshape(N, -1)


def has_int8_minimum(arrays):
    """True for a q8_0 tensor holding -128, which minillm's integer kernels cannot take."""
    q = arrays["q"]
    return q.dtype == np.int8 and q.size > 0 and int(q.min()) == -128
