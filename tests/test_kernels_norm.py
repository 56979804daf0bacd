"""The native rms_norm and layer_norm (forward and backward) equal the NumPy references on both SIMD
paths, for odd widths, single rows, large magnitudes and a mean far from zero; the weight gradients,
summed over rows in per-thread buffers, too; the bindings reject bad arrays before touching memory."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference

if native.AVAILABLE:
    from minillm.kernels.native import norm as native_norm
from kernel_parity import assert_close, simd_path, tolerance  # noqa: F401 (simd_path is a fixture)
from minillm.testing.strategies import shapes

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "norm"   # the simd_path fixture runs each test on every path this family has


@st.composite
def norm_inputs(draw, max_side=40):
    """x (..., C) with C up to 800, weight, bias, dy; magnitudes from 1e-3 to 1e4, maybe a large offset."""
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=max_side)) if draw(st.booleans()) else ()
    C = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 64, 100, 768, 801]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale, offset = draw(st.sampled_from([1e-3, 1.0, 1e4])), draw(st.sampled_from([0.0, 0.0, 10.0]))
    x = (rng.standard_normal(lead + (C,)) * scale + offset * scale).astype(dtype)
    w, b = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    dy = rng.standard_normal(x.shape).astype(dtype)
    return x, w, b, dy, draw(st.sampled_from([1e-5, 1e-6]))


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


@given(norm_inputs())
def test_rms_norm_native_equals_reference(simd_path, inputs):
    x, w, _, dy, eps = inputs
    C, rows = x.shape[-1], x.size // x.shape[-1]
    tol = tolerance(x.dtype, C)
    y, inv = native_norm.rms_norm_forward(x, w, eps)
    y_ref, inv_ref = reference.rms_norm_forward(*f64(x, w), eps)
    assert y.dtype == x.dtype and inv.shape == inv_ref.shape
    assert_close(inv, inv_ref, rtol=tol)
    assert_close(y, y_ref, rtol=tol, atol=tol * np.abs(w) * np.abs(x * inv_ref).max())

    dx, dw = native_norm.rms_norm_backward(dy, x, w, inv)
    dx_ref, dw_ref = reference.rms_norm_backward(*f64(dy, x, w, inv))
    g_scale = np.abs(dy * w).sum(-1, keepdims=True) * inv_ref   # |g| summed over the row, times 1/rms
    assert_close(dx, dx_ref, rtol=tol, atol=tol * g_scale)
    dw_scale = np.abs(dy * x * inv_ref).reshape(-1, C).sum(0)
    assert_close(dw, dw_ref, rtol=0, atol=tolerance(x.dtype, rows + C) * dw_scale)


@given(norm_inputs())
def test_layer_norm_native_equals_reference(simd_path, inputs):
    x, w, b, dy, eps = inputs
    C, rows = x.shape[-1], x.size // x.shape[-1]
    tol = tolerance(x.dtype, C)
    y, x_hat, inv = native_norm.layer_norm_forward(x, w, b, eps)
    y_ref, x_hat_ref, inv_ref = reference.layer_norm_forward(*f64(x, w, b), eps)
    assert y.dtype == x.dtype and inv.shape == inv_ref.shape
    # x - mean loses the digits the offset carries: errors scale with |x| / std, not 1
    spread = 1 + np.abs(x).max(-1, keepdims=True) * inv_ref
    assert_close(inv, inv_ref, rtol=tol * spread ** 2)
    assert_close(x_hat, x_hat_ref, rtol=0, atol=tol * spread)
    assert_close(y, y_ref, rtol=0, atol=tol * spread * (np.abs(w) + np.abs(b)))

    # the backward in float64 from the native forward's own x_hat and inv_std
    dx, dw, db = native_norm.layer_norm_backward(dy, x_hat, w, inv)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(*f64(dy, x_hat, w, inv))
    g_scale = np.abs(dy * w).sum(-1, keepdims=True) * inv.astype(np.float64) * (1 + np.abs(x_hat).max())
    assert_close(dx, dx_ref, rtol=tol, atol=tol * g_scale)
    red = tolerance(x.dtype, rows + C)
    assert_close(dw, dw_ref, rtol=0, atol=red * np.abs(dy * x_hat).reshape(-1, C).sum(0))
    assert_close(db, db_ref, rtol=0, atol=red * np.abs(dy).reshape(-1, C).sum(0))


def test_weight_gradients_over_many_rows_on_several_threads(simd_path):
    # enough rows for the parallel path, with per-thread partial buffers summed at the end
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 4099, 77)), rng.standard_normal((2, 4099, 77))
    w, b = rng.standard_normal(77), rng.standard_normal(77)
    _, inv = native_norm.rms_norm_forward(x, w, 1e-5)
    for got, want in zip(native_norm.rms_norm_backward(dy, x, w, inv),
                         reference.rms_norm_backward(dy, x, w, inv)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    _, x_hat, inv = native_norm.layer_norm_forward(x, w, b, 1e-5)
    for got, want in zip(native_norm.layer_norm_backward(dy, x_hat, w, inv),
                         reference.layer_norm_backward(dy, x_hat, w, inv)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_empty_inputs_give_empty_outputs_and_zero_weight_gradients():
    C = native._C
    for dtype in (np.float32, np.float64):
        x, w = np.zeros((0, 5), dtype), np.ones(5, dtype)
        y, inv = C.rms_norm_forward(x, w, 1e-5)
        assert y.shape == (0, 5) and inv.shape == (0, 1)
        dx, dw = C.rms_norm_backward(x, x, w, inv)
        assert dx.shape == (0, 5) and np.all(dw == 0)
        y, x_hat, inv = C.layer_norm_forward(x, w, w, 1e-5)
        dx, dw, db = C.layer_norm_backward(x, x_hat, w, inv)
        assert dx.shape == (0, 5) and np.all(dw == 0) and np.all(db == 0)
        # C = 0: the statistics of nothing are NaN (as in NumPy), the outputs empty
        x, w = np.zeros((3, 0), dtype), np.ones(0, dtype)
        y, inv = C.rms_norm_forward(x, w, 1e-5)
        assert y.shape == (3, 0) and inv.shape == (3, 1) and np.isnan(inv).all()
        y, x_hat, inv = C.layer_norm_forward(x, w, w, 1e-5)
        assert x_hat.shape == (3, 0) and np.isnan(inv).all()
        assert C.layer_norm_backward(x, x_hat, w, inv)[0].shape == (3, 0)


# ---- bindings: bad arguments raise before any kernel runs

X, W = np.ones((4, 6), np.float32), np.ones(6, np.float32)
INV = np.ones((4, 1), np.float32)


@pytest.mark.parametrize("args, match", [
    ((X, np.ones(5, np.float32), 1e-5), r"weight has shape \(5,\) but x has shape \(4, 6\)"),
    ((X, np.ones((1, 6), np.float32), 1e-5), "weight has shape"),
    ((X, np.ones(6, np.float64), 1e-5), "must have x's dtype"),
    ((X, W[::-1].copy()[::2], 1e-5), "contiguous|shape"),
    ((X.astype(np.int32), W, 1e-5), "float32 or float64"),
    ((np.ones((6, 4), np.float32).T, W, 1e-5), "C-contiguous"),
    ((np.array(1.0, np.float32), W, 1e-5), "at least one dimension"),
    ((X, W, -1.0), "eps"),
    ((X, W, float("nan")), "eps"),
])
def test_rms_norm_forward_binding_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        native._C.rms_norm_forward(*args)


@pytest.mark.parametrize("args, match", [
    ((X[:3], X, W, INV), "dy has shape"),
    ((X, X, W, np.ones((4,), np.float32)), r"inv_rms has shape \(4,\)"),
    ((X, X, W, np.ones((3, 1), np.float32)), "inv_rms has shape"),
    ((X, X, W, np.ones((4, 1), np.float64)), "inv_rms"),
    ((X, X, np.ones(7, np.float32), INV), "weight has shape"),
])
def test_norm_backward_bindings_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        native._C.rms_norm_backward(*args)
    with pytest.raises(ValueError, match=match.replace("inv_rms", "inv_std").replace("dy has", "dy has")):
        native._C.layer_norm_backward(*args)


def test_layer_norm_binding_checks_the_bias():
    with pytest.raises(ValueError, match="bias has shape"):
        native._C.layer_norm_forward(X, W, np.ones(5, np.float32), 1e-5)
    with pytest.raises(ValueError, match="bias must have x's dtype"):
        native._C.layer_norm_forward(X, W, np.ones(6, np.float64), 1e-5)


@given(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.integers(0, 5),
       st.sampled_from([np.float32, np.float64, np.int32]), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.booleans())
def test_fuzz_norm_bindings_never_crash(shape, wlen, dtype, wdtype, transpose, bad_stat):
    x = np.ones(shape, dtype)
    if transpose:
        x = x.T
    w = np.ones(wlen, wdtype)
    stat = np.ones(x.shape[:-1] + (1,) if x.ndim and not bad_stat else (2,), dtype)
    calls = [lambda: native._C.rms_norm_forward(x, w, 1e-5), lambda: native._C.layer_norm_forward(x, w, w, 1e-5),
             lambda: native._C.rms_norm_backward(x, x, w, stat), lambda: native._C.layer_norm_backward(x, x, w, stat)]
    for call in calls:
        try:
            out = call()
        except (ValueError, TypeError):
            continue
        assert out[0].shape == x.shape   # accepted only consistent arguments
