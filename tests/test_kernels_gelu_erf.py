"""The native exact GELU (csrc/gelu_erf.cpp, forward and backward) equals the NumPy reference on
every SIMD path the fixture offers, over the float range; the bindings reject bad arrays."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.testing.strategies import shapes

if native.AVAILABLE:
    from minillm.kernels.native import gelu_erf as native_gelu
from kernel_parity import assert_close, simd_path  # noqa: F401 (simd_path is a fixture)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")

TINY = {np.float32: 1e3 * np.finfo(np.float32).tiny, np.float64: 1e3 * np.finfo(np.float64).tiny}


def ulps(dtype, k):
    return k * np.finfo(dtype).eps


def term_scale(x):
    """|Phi(x)| + |x phi(x)|: the size of the derivative's two terms, which cancel near x = -0.75."""
    x = x.astype(np.float64)
    return reference.gelu_erf.normal_cdf(x) + np.abs(x) * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


@given(shape=shapes(min_dims=0, max_dims=3, max_side=40), scale=st.sampled_from([1e-3, 1.0, 3.0, 8.0, 1e4]),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_gelu_erf_native_equals_reference(simd_path, shape, scale, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = native_gelu.gelu_erf_forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    x64 = x.astype(np.float64)
    assert_close(y, reference.gelu_erf_forward(x64), rtol=ulps(dtype, 8), atol=TINY[dtype])
    dx = native_gelu.gelu_erf_backward(dy, x)
    assert dx.dtype == dtype and dx.shape == x.shape
    want = reference.gelu_erf_backward(dy.astype(np.float64), x64)
    assert_close(dx, want, rtol=0, atol=ulps(dtype, 8) * np.abs(dy.astype(np.float64)) * term_scale(x) + TINY[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_erf_is_accurate_across_the_range_and_exact_in_the_tails(simd_path, dtype):
    x = np.concatenate([np.linspace(-12, 8, 20001), [-1e30, -100, -41, 41, 100, 1e30]]).astype(dtype)
    y = native_gelu.gelu_erf_forward(x)
    # float32 denormals (x < -12.8 or so) are held to an absolute tolerance
    assert_close(y, reference.gelu_erf_forward(x.astype(np.float64)), rtol=ulps(dtype, 8), atol=TINY[dtype])
    dx = native_gelu.gelu_erf_backward(np.ones_like(x), x)
    assert np.all(dx[x >= 41] == 1) and np.all(dx[x <= -41] == 0)
    near = np.abs(x) < 12
    want = reference.gelu_erf_backward(np.ones(near.sum()), x[near].astype(np.float64))
    assert_close(dx[near], want, rtol=0, atol=ulps(dtype, 8) * term_scale(x[near]))


def test_gelu_erf_propagates_nan_and_handles_infinity(simd_path):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0] * 4, np.float32)   # SIMD lanes and the scalar tail
    y = native_gelu.gelu_erf_forward(x)
    dx = native_gelu.gelu_erf_backward(np.ones_like(x), x)
    assert np.isnan(y[::5]).all() and np.isnan(dx[::5]).all()
    assert (y[1::5] == np.inf).all() and np.isnan(y[2::5]).all() and (y[3::5] == 0).all()   # -inf * Phi(-inf) = -inf * 0
    assert (dx[1::5] == 1).all() and (dx[2::5] == 0).all() and (dx[3::5] == 0.5).all()


def test_gelu_erf_bindings_reject_bad_arrays():
    with pytest.raises(ValueError, match="gelu_erf_forward"):
        native._C.gelu_erf_forward(np.arange(4))                                # integers
    with pytest.raises(ValueError, match="gelu_erf_backward"):
        native._C.gelu_erf_backward(np.ones(3, np.float32), np.ones(4, np.float32))   # shapes differ
    with pytest.raises(ValueError, match="gelu_erf_backward"):
        native._C.gelu_erf_backward(np.ones(4, np.float64), np.ones(4, np.float32))   # dtypes differ
    with pytest.raises(ValueError, match="gelu_erf_forward"):
        native._C.gelu_erf_forward(np.ones((4, 4), np.float32)[:, ::2])          # not contiguous
