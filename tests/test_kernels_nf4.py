"""NF4 (QLoRA's 4-bit NormalFloat with double-quantized scales): the reference round trip stays within
half a level step of each block's absmax (plus the 8-bit scale code's 2.2%); the native dequantize equals
the reference bit for bit and the native matmul equals it to float rounding, on the AVX2 and the scalar
path; the packing is the documented one; bad arrays get a clear error."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.kernels.reference.nf4 import BLOCK, LEVELS, pack_nf4, unpack_nf4

from kernel_parity import assert_close, simd_path, tolerance  # noqa: F401 (simd_path is a fixture)

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
ROWS = st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 33, 300]))
BLOCKS = st.integers(1, 5)
SEEDS = st.integers(0, 2**32 - 1)


@given(N=ROWS, blocks=BLOCKS, seed=SEEDS, scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_dequantized_weights_are_within_half_a_level_step(N, blocks, seed, scale):
    w = (np.random.default_rng(seed).standard_normal((N, blocks * BLOCK)) * scale).astype(np.float32)
    arrays = reference.quantize_nf4(w)
    err = np.abs(reference.dequantize_nf4(**arrays) - w).reshape(N, blocks, BLOCK)
    absmax = np.abs(w).reshape(N, blocks, BLOCK).max(axis=-1, keepdims=True)
    half_step = np.max(np.diff(LEVELS)) / 2                   # the widest gap between levels, halved
    # the block scale is absmax within 2^(1/32); a value off by at most half a gap of that scale
    assert np.all(err <= absmax * (half_step * 2 ** (1 / 32) + (2 ** (1 / 32) - 1)) + 1e-6 * absmax)


def test_double_quantization_keeps_the_block_absmax_within_its_code_step():
    w = np.random.default_rng(0).standard_normal((8, 4 * BLOCK)).astype(np.float32) * np.geomspace(1e-3, 1, 8)[:, None]
    arrays = reference.quantize_nf4(w)
    c = reference.nf4.block_scales(arrays["scale"], arrays["scale2"])
    absmax = np.abs(w).reshape(8, 4, BLOCK).max(axis=-1)
    assert arrays["scale"].dtype == np.uint8 and arrays["scale2"].shape == (1,)
    assert np.all(np.abs(np.log2(c / absmax)) <= 1 / 32 + 1e-6)


def test_nf4_packing_is_value_j_low_and_j_plus_32_high():
    values = (np.arange(2 * BLOCK) % 16).reshape(1, -1).astype(np.uint8)
    packed = pack_nf4(values)
    assert packed.shape == (1, BLOCK)
    assert packed[0, 0] == values[0, 0] | (values[0, 32] << 4)
    assert packed[0, 32] == values[0, 64] | (values[0, 96] << 4)
    np.testing.assert_array_equal(unpack_nf4(packed), values)


def test_a_zero_block_dequantizes_to_zero():
    w = np.zeros((2, 2 * BLOCK), np.float32)
    w[1, BLOCK:] = np.linspace(-1, 1, BLOCK)
    out = reference.dequantize_nf4(**reference.quantize_nf4(w))
    assert np.all(out[0] == 0) and np.all(out[1, :BLOCK] == 0) and out[1, -1] == 1.0


@needs_native
@given(N=ROWS, blocks=BLOCKS, seed=SEEDS)
def test_native_dequantize_equals_the_reference_bit_for_bit(simd_path, N, blocks, seed):
    w = np.random.default_rng(seed).standard_normal((N, blocks * BLOCK)).astype(np.float32)
    arrays = reference.quantize_nf4(w)
    np.testing.assert_array_equal(native.nf4.dequantize_nf4(**arrays), reference.dequantize_nf4(**arrays))


@needs_native
@given(M=st.integers(1, 11), N=ROWS, blocks=BLOCKS, seed=SEEDS, with_bias=st.booleans())
def test_native_nf4_matmul_equals_the_reference(simd_path, M, N, blocks, seed, with_bias):
    rng = np.random.default_rng(seed)
    K = blocks * BLOCK
    arrays = reference.quantize_nf4(rng.standard_normal((N, K)).astype(np.float32))
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    expected = reference.nf4_matmul(x, **arrays, bias=bias)
    w = reference.dequantize_nf4(**arrays)
    scale = np.abs(x) @ np.abs(w).T + (0 if bias is None else np.abs(bias))   # the sum of |terms| bounds the error
    assert_close(native.nf4.nf4_matmul(x, **arrays, bias=bias), expected, rtol=0, atol=tolerance(np.float32, K) * scale)


def test_bad_weights_get_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 64"):
        reference.quantize_nf4(np.zeros((2, 96), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        reference.quantize_nf4(np.full((2, 64), np.nan, np.float32))


@needs_native
def test_native_bad_arrays_get_a_clear_error():
    arrays = reference.quantize_nf4(np.ones((4, 128), np.float32))
    with pytest.raises(ValueError, match="nf4_matmul"):
        native.nf4.nf4_matmul(np.ones((2, 64), np.float32), **arrays)
    with pytest.raises(ValueError, match="scale"):
        native.nf4.dequantize_nf4(arrays["q"], arrays["scale"][:, :1], arrays["scale2"])
