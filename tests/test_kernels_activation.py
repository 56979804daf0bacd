"""The native gelu and silu (forward and backward) equal the NumPy references on both SIMD paths,
over the whole float range: no overflow at large |x|, exact limits in the tails, NaN stays NaN;
the bindings reject bad arrays before touching memory."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference

if native.AVAILABLE:
    from minillm.kernels.native import activation as native_act
from kernel_parity import assert_close, simd_path  # noqa: F401 (simd_path is a fixture)
from minillm.testing.strategies import shapes

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "activation"   # the simd_path fixture runs each test on every path this family has

KERNELS = {"gelu": (reference.gelu_forward, reference.gelu_backward),
           "silu": (reference.silu_forward, reference.silu_backward)}


def native_pair(name):
    return getattr(native_act, f"{name}_forward"), getattr(native_act, f"{name}_backward")


def ulps(dtype, k=8):
    return k * np.finfo(dtype).eps


@given(shape=shapes(min_dims=0, max_dims=3, max_side=40), scale=st.sampled_from([1e-3, 1.0, 5.0, 30.0, 1e4]),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]),
       name=st.sampled_from(list(KERNELS)))
def test_activation_native_equals_reference(simd_path, shape, scale, seed, dtype, name):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = native_pair(name)
    ref_fwd, ref_bwd = KERNELS[name]
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    # elementwise: a few ulp relative, plus a few ulp of |x| where the reference's own tanh form cancels
    x64 = x.astype(np.float64)
    assert_close(y, ref_fwd(x64), rtol=ulps(dtype), atol=ulps(dtype) * np.abs(x64))
    dx = bwd(dy, x)
    assert dx.dtype == dtype and dx.shape == x.shape
    # the derivative's terms reach ~|x|^3 s (1 - s) before they cancel; allow ulps of their size
    term = np.abs(dy.astype(np.float64)) * (1 + np.abs(x64) ** 3 * np.exp(-np.minimum(np.abs(x64), 30)))
    assert_close(dx, ref_bwd(dy.astype(np.float64), x64), rtol=ulps(dtype, 32), atol=ulps(dtype, 32) * term)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_tails_are_exact_and_never_overflow(simd_path, name, dtype):
    big = np.finfo(dtype).max
    x = np.array([-big, -1e30, -1e4, -800, -100, -31, -20, 20, 31, 100, 800, 1e4, 1e30, big] * 2, dtype)  # SIMD + tail
    fwd, bwd = native_pair(name)
    y, dx = fwd(x), bwd(np.ones_like(x), x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    with np.errstate(all="ignore"):
        y_ref = KERNELS[name][0](x.astype(np.float64))
    # float32's exp flushes below e^-87 to 0 where the true value may still be a denormal
    # (and the tanh form of the reference cancels to 0 where the true value is a tiny negative number)
    assert_close(y, y_ref, rtol=ulps(dtype), atol=1e3 * np.finfo(dtype).tiny + ulps(np.float64) * np.abs(x))
    far = np.abs(x) >= 800   # the derivative is exactly 1 (x >> 0) or 0 (x << 0) there
    assert np.all(dx[far & (x > 0)] == 1) and np.all(dx[far & (x < 0)] == 0)
    with np.errstate(all="ignore"):
        dx_ref = KERNELS[name][1](np.ones(x.shape), x.astype(np.float64))
    atol = 1e3 * np.finfo(dtype).tiny + ulps(np.float64, 64) * np.abs(x[~far].astype(np.float64)) ** 3
    assert_close(dx[~far], dx_ref[~far], rtol=ulps(dtype, 64), atol=atol)


@pytest.mark.parametrize("name", list(KERNELS))
def test_activation_propagates_nan_and_matches_reference_at_infinity(simd_path, name):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0] * 4, np.float32)
    fwd, bwd = native_pair(name)
    ref_fwd, ref_bwd = KERNELS[name]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(fwd(x), ref_fwd(x))
        assert np.isnan(bwd(np.ones_like(x), x)[::5]).all()


def activation_terms(name, x):
    """z, the argument of the sigmoid s, and the size of the derivative's terms before they cancel:
    silu' = s + x s (1 - s);  gelu' = s + 2c x s (1 - s) (1 + 3a x^2),  z = 2u."""
    x = x.astype(np.float64)
    c, a = np.sqrt(2 / np.pi), 0.044715
    z = x if name == "silu" else 2 * c * (x + a * x ** 3)
    s = 1 / (1 + np.exp(-np.clip(z, -700, 700)))
    slope = np.abs(x) if name == "silu" else 2 * c * np.abs(x) * (1 + 3 * a * x * x)
    return z, s + slope * s * (1 - s)


@given(shape=shapes(min_dims=1, max_dims=2, max_side=50), seed=st.integers(0, 2**32 - 1))
def test_simd_and_scalar_paths_agree_to_a_few_ulp(simd_path, shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for name in KERNELS:
        fwd, bwd = native_pair(name)
        simd = fwd(x), bwd(dy, x)   # on the forced path
        native._C.force_isa("scalar")
        try:
            scalar = fwd(x), bwd(dy, x)
        finally:
            native._C.force_isa(simd_path)
        # s = sigmoid(z) has condition number ~|z| in the tail, and z is rounded differently (FMA or not)
        # on the two paths: allow (8 + 4|z|) ulp of y, and of the derivative's terms before they cancel
        rel = np.finfo(np.float32).eps * (8 + 4 * np.abs(activation_terms(name, x)[0]))
        tiny = 1e3 * np.finfo(np.float32).tiny   # exp256 flushes results below e^-87 to 0, expf does not
        assert_close(simd[0], scalar[0], rtol=rel, atol=tiny)
        assert_close(simd[1], scalar[1], rtol=0, atol=rel * np.abs(dy) * activation_terms(name, x)[1] + tiny)


@pytest.mark.parametrize("fn", ["gelu", "silu"])
def test_activation_bindings_reject_bad_arrays(fn):
    forward, backward = getattr(native._C, f"{fn}_forward"), getattr(native._C, f"{fn}_backward")
    x = np.ones((3, 4), np.float32)
    for bad in [np.ones((3, 4), np.int32), np.ones((3, 4), np.float16), np.ones((4, 3), np.float32).T,
                np.ones((3, 8), np.float32)[:, ::2], np.array(1.0, np.float32)]:
        with pytest.raises((ValueError, TypeError)):
            forward(bad)
        with pytest.raises((ValueError, TypeError)):
            backward(bad, bad)
    with pytest.raises(ValueError, match="dy has shape"):
        backward(np.ones((4, 3), np.float32), x)
    with pytest.raises(ValueError, match="same dtype"):
        backward(np.ones((3, 4), np.float64), x)
    for shape in [(0,), (0, 5), (3, 0)]:
        empty = np.zeros(shape, np.float32)
        assert forward(empty).shape == shape and backward(empty, empty).shape == shape


@given(st.lists(st.integers(0, 5), min_size=0, max_size=4), st.sampled_from(
    [np.float32, np.float64, np.int64, np.float16, bool]), st.booleans(), st.booleans())
def test_fuzz_activation_bindings_never_crash(shape, dtype, transpose, mismatch):
    x = np.zeros(shape, dtype=dtype)
    if transpose:
        x = x.T
    other = np.zeros(shape[::-1] if mismatch else shape, dtype=dtype)
    for fn in ("gelu", "silu"):
        try:
            y = getattr(native._C, f"{fn}_forward")(x)
        except (ValueError, TypeError):
            pass
        else:   # gelu(0) = silu(0) = 0
            assert y.shape == x.shape and np.all(y == 0)
        try:
            dx = getattr(native._C, f"{fn}_backward")(other, x)
        except (ValueError, TypeError):
            pass
        else:   # dy = 0
            assert dx.shape == x.shape and np.all(dx == 0)


def test_zero_dimensional_arrays_go_through_the_wrapper():
    for name in KERNELS:
        fwd, bwd = native_pair(name)
        x = np.array(0.5)
        assert fwd(x).shape == () and np.isclose(fwd(x), KERNELS[name][0](x))
        assert bwd(np.array(1.0), x).shape == ()
