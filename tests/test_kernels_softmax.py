"""The native softmax equals the NumPy reference (both the AVX2 and the scalar path), and the
bindings reject bad arrays with ValueError instead of touching memory."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm as mm
from minillm.kernels import native, reference

if native.AVAILABLE:
    from minillm.kernels.native import softmax as native_softmax
from minillm.testing.strategies import shapes

from kernel_parity import assert_close, simd_path, tolerance  # noqa: F401 (simd_path is a fixture)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "softmax"   # the simd_path fixture runs each test on every path this family has


@given(shape=shapes(min_dims=1, max_dims=3, max_side=70), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_softmax_native_equals_reference(simd_path, shape, scale, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    n = shape[-1]
    y = native_softmax.softmax_forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    y_ref = reference.softmax_forward(x.astype(np.float64))
    np.testing.assert_allclose(y, y_ref, rtol=tolerance(dtype, n), atol=tolerance(dtype, n) * 1e-3)
    dx = native_softmax.softmax_backward(dy, y)
    dx_ref = reference.softmax_backward(dy.astype(np.float64), y.astype(np.float64))
    scale_dx = np.abs(dy).max() * n
    np.testing.assert_allclose(dx, dx_ref, rtol=tolerance(dtype, n), atol=tolerance(dtype, n) * scale_dx)


def test_softmax_native_handles_inf_entries_like_the_reference(simd_path):
    x = np.array([[0.0, -np.inf, 1.0] * 5, [-np.inf] * 14 + [3.0]], dtype=np.float32)
    np.testing.assert_allclose(native_softmax.softmax_forward(x), reference.softmax_forward(x), rtol=1e-6, atol=1e-7)


def test_vectorised_exp_is_accurate_over_the_whole_range():
    # softmax of [0, t] is [1/(1+e^t), e^t/(1+e^t)]: checks exp from underflow to overflow
    t = np.linspace(-100, 100, 20001, dtype=np.float32)
    x = np.stack([np.zeros_like(t), t], axis=1)
    y = native_softmax.softmax_forward(x)
    expected = np.stack([1 / (1 + np.exp(t.astype(np.float64))), 1 / (1 + np.exp(-t.astype(np.float64)))], 1)
    np.testing.assert_allclose(y, expected, rtol=2e-6, atol=1e-30)


BAD_ARRAYS = {
    "int64": np.arange(6).reshape(2, 3),
    "float16": np.ones((2, 3), np.float16),
    "complex": np.ones((2, 3), np.complex64),
    "object": np.array([[None, 1]], dtype=object),
    "0-d": np.array(1.0, np.float32),
    "non-contiguous": np.ones((4, 6), np.float32)[:, ::2],
    "fortran order": np.asfortranarray(np.ones((3, 4), np.float32)),
}


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_bindings_reject_bad_arrays_with_value_error(name):
    with pytest.raises((ValueError, TypeError)):
        native._C.softmax_forward(BAD_ARRAYS[name])
    with pytest.raises((ValueError, TypeError)):
        native._C.softmax_backward(BAD_ARRAYS[name], BAD_ARRAYS[name])


def test_bindings_reject_mismatched_pairs_and_accept_empty_arrays():
    y = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"dy has shape \(3, 2\) but y has shape \(2, 3\)"):
        native._C.softmax_backward(np.ones((3, 2), np.float32), y)
    with pytest.raises(ValueError, match="same dtype"):
        native._C.softmax_backward(np.ones((2, 3), np.float64), y)
    for shape in [(0,), (0, 5), (3, 0)]:
        empty = np.zeros(shape, np.float32)
        assert native._C.softmax_forward(empty).shape == shape
        assert native._C.softmax_backward(empty, empty).shape == shape


@given(st.lists(st.integers(0, 5), min_size=0, max_size=4), st.sampled_from(
    [np.float32, np.float64, np.int32, np.float16, bool]), st.booleans(), st.booleans())
def test_fuzz_bindings_never_crash(shape, dtype, transpose, mismatch):
    x = np.ones(shape, dtype=dtype)
    if transpose:
        x = x.T
    other = np.ones(shape[::-1] if mismatch else shape, dtype=dtype)
    n = x.shape[-1] if x.ndim else 1
    try:
        y = native._C.softmax_forward(x)
    except (ValueError, TypeError):
        pass
    else:   # accepted only a valid array, and computed the right thing: softmax of ones is 1/n
        assert y.shape == x.shape and (x.size == 0 or np.allclose(y, 1.0 / n))
    try:
        dx = native._C.softmax_backward(x, other)
    except (ValueError, TypeError):
        pass
    else:   # dx = y (dy - sum(dy y)) = 1 - n for dy = y = ones
        assert dx.shape == x.shape and np.allclose(dx, 1.0 - n)


# ---- log-softmax

@given(shape=shapes(min_dims=1, max_dims=3, max_side=70), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_log_softmax_native_equals_reference(simd_path, shape, scale, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    n = shape[-1]
    y = native_softmax.log_softmax_forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    y_ref = reference.log_softmax_forward(x.astype(np.float64))
    # y = (x - m) - log(s): absolute error of a few ulp of |x - m| plus the log of an n-term sum
    atol = tolerance(dtype, n) * (1 + np.abs(y_ref))
    assert_close(y, y_ref, rtol=0, atol=atol)
    dx = native_softmax.log_softmax_backward(dy, y)
    dx_ref = reference.log_softmax_backward(dy.astype(np.float64), y.astype(np.float64))
    assert_close(dx, dx_ref, rtol=tolerance(dtype, n), atol=tolerance(dtype, n) * np.abs(dy).sum(-1, keepdims=True))


def test_log_softmax_backward_of_a_large_row_streams_the_same_values(simd_path):
    # 64 MiB of output takes the non-temporal store path; rows start at every alignment mod 32 bytes.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2049, 8193)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = native_softmax.softmax_forward(x)
    np.testing.assert_allclose(native_softmax.softmax_backward(dy, y), reference.softmax_backward(dy, y),
                               rtol=1e-4, atol=1e-7)
    ly = native_softmax.log_softmax_forward(x)
    np.testing.assert_allclose(native_softmax.log_softmax_backward(dy, ly), reference.log_softmax_backward(dy, ly),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_log_softmax_bindings_reject_bad_arrays(name):
    with pytest.raises((ValueError, TypeError)):
        native._C.log_softmax_forward(BAD_ARRAYS[name])
    with pytest.raises((ValueError, TypeError)):
        native._C.log_softmax_backward(BAD_ARRAYS[name], BAD_ARRAYS[name])


@given(st.lists(st.integers(0, 5), min_size=0, max_size=4), st.sampled_from(
    [np.float32, np.float64, np.int32, np.float16, bool]), st.booleans(), st.booleans())
def test_fuzz_log_softmax_bindings_never_crash(shape, dtype, transpose, mismatch):
    x = np.ones(shape, dtype=dtype)
    if transpose:
        x = x.T
    other = np.ones(shape[::-1] if mismatch else shape, dtype=dtype)
    n = x.shape[-1] if x.ndim else 1
    try:
        y = native._C.log_softmax_forward(x)
    except (ValueError, TypeError):
        pass
    else:   # log_softmax of ones is -log(n)
        assert y.shape == x.shape and (x.size == 0 or np.allclose(y, -np.log(n)))
    try:
        dx = native._C.log_softmax_backward(x, other)
    except (ValueError, TypeError):
        pass
    else:   # dx = dy - exp(y) sum(dy) = 1 - e n for dy = y = ones
        assert dx.shape == x.shape and np.allclose(dx, 1.0 - np.e * n)
