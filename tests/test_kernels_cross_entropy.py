"""The native fused cross-entropy (loss and gradient in one pass per row) equals the NumPy reference
on both SIMD paths, for every reduction, with ignored rows (all of them, too) and logits up to 1e4;
its bindings reject bad targets and arrays with ValueError/TypeError before touching memory."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference

if native.AVAILABLE:
    from minillm.kernels.native import softmax as native_softmax
from kernel_parity import assert_close, simd_path, tolerance  # noqa: F401 (simd_path is a fixture)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "cross_entropy"   # the simd_path fixture runs each test on every path this family has


@st.composite
def problems(draw):
    """logits (N, V), targets (N,) with some (or every) row ignored, a reduction and a dloss."""
    N = draw(st.integers(1, 9))
    V = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 16, 17, 63, 1000, 3001]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = (rng.standard_normal((N, V)) * scale).astype(dtype)
    ignore_index = draw(st.sampled_from([-100, -1, 0]))
    targets = rng.integers(0, V, N)
    ignored = draw(st.sampled_from(["none", "some", "all"]))
    if ignored == "some":
        targets[rng.random(N) < 0.4] = ignore_index
    elif ignored == "all":
        targets[:] = ignore_index
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    dloss = rng.standard_normal(N if reduction == "none" else ()).astype(dtype)
    return logits, targets, ignore_index, reduction, dloss


@given(problems())
def test_cross_entropy_native_equals_reference(simd_path, problem):
    logits, targets, ignore_index, reduction, dloss = problem
    dtype, (N, V) = logits.dtype, logits.shape
    loss, state = native_softmax.cross_entropy_forward(logits, targets, ignore_index, reduction)
    loss_ref, probs = reference.cross_entropy_forward(logits.astype(np.float64), targets, ignore_index, reduction)
    assert loss.dtype == dtype and loss.shape == loss_ref.shape
    # nll = (m - x_t) + log(sum exp(x - m)): a few ulp of the logits' magnitude plus an n-term sum
    tol = tolerance(dtype, V)
    assert_close(loss, loss_ref, rtol=tol, atol=tol * (1 + np.abs(logits).max()) * (N if reduction == "sum" else 1))

    dlogits = native_softmax.cross_entropy_backward(dloss, state, targets, ignore_index, reduction)
    dlogits_ref = reference.cross_entropy_backward(dloss.astype(np.float64), probs, targets, ignore_index, reduction)
    assert dlogits.dtype == dtype and dlogits.shape == (N, V)
    assert_close(dlogits, dlogits_ref, rtol=tol, atol=tol * np.abs(dloss).max())
    assert np.all(dlogits[targets == ignore_index] == 0)


def test_cross_entropy_of_an_all_ignored_batch_is_zero(simd_path):
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    targets = np.full(4, -100)
    for reduction, shape in [("mean", ()), ("sum", ()), ("none", (4,))]:
        loss, state = native_softmax.cross_entropy_forward(logits, targets, -100, reduction)
        assert loss.shape == shape and np.all(loss == 0)
        dloss = np.ones(shape, np.float32)
        assert np.all(native_softmax.cross_entropy_backward(dloss, state, targets, -100, reduction) == 0)


def test_cross_entropy_backward_does_not_change_its_state(simd_path):
    # the tape may run a backward twice; the state must survive the first
    rng = np.random.default_rng(1)
    logits, targets = rng.standard_normal((3, 40)).astype(np.float32), np.array([1, -100, 39])
    _, state = native_softmax.cross_entropy_forward(logits, targets)
    before = state.copy()
    first = native_softmax.cross_entropy_backward(np.float32(2.0), state, targets)
    second = native_softmax.cross_entropy_backward(np.float32(2.0), state, targets)
    assert np.array_equal(state, before) and np.array_equal(first, second)


def test_cross_entropy_of_a_large_batch_streams_the_same_values(simd_path):
    # > 64 MiB of gradient takes the non-temporal store path in the backward
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((530, 32003)) * 3).astype(np.float32)
    targets = rng.integers(0, 32003, 530)
    targets[::3] = -100
    tol = tolerance(np.float32, 32003)   # the scalar twin sums 32003 terms one after another
    loss, state = native_softmax.cross_entropy_forward(logits, targets)
    loss_ref, probs = reference.cross_entropy_forward(logits.astype(np.float64), targets)
    assert_close(loss, loss_ref, rtol=tol)
    dlogits = native_softmax.cross_entropy_backward(np.float32(0.5), state, targets)
    assert_close(dlogits, reference.cross_entropy_backward(0.5, probs, targets), rtol=tol, atol=1e-12)


# ---- the bindings check targets and arrays before any kernel reads memory

LOGITS = np.zeros((3, 5), np.float32)


@pytest.mark.parametrize("targets, match", [
    (np.array([0, 5, 1]), r"targets\[1\] = 5 is outside \[0, 5\)"),
    (np.array([0, -1, 1]), r"targets\[1\] = -1 is outside"),
    (np.array([2**40, 0, 0]), "outside"),
    (np.array([0, 1]), r"must be a contiguous \(3,\) array"),
    (np.array([[0, 1, 2]]), "contiguous"),
    (np.array([0, 1, 2, 3, 4, 0])[::2], "contiguous"),
    (np.array([0, 1, 2], np.int32), "must be int64"),
    (np.array([0.0, 1.0, 2.0]), "must be int64"),
])
def test_cross_entropy_binding_rejects_bad_targets(targets, match):
    with pytest.raises(ValueError, match=match):
        native._C.cross_entropy_forward(LOGITS, targets, -100)


@pytest.mark.parametrize("logits", [
    np.zeros((3, 5), np.int64), np.zeros((3, 5), np.float16), np.zeros(5, np.float32),
    np.zeros((1, 3, 5), np.float32), np.zeros((5, 3), np.float32).T, np.array(1.0, np.float32),
])
def test_cross_entropy_binding_rejects_bad_logits(logits):
    with pytest.raises((ValueError, TypeError)):
        native._C.cross_entropy_forward(logits, np.array([0, 1, 2]), -100)


def test_cross_entropy_bindings_accept_empty_batches_and_empty_vocabularies_when_all_ignored():
    nll, g = native._C.cross_entropy_forward(np.zeros((0, 7), np.float32), np.zeros(0, np.int64), -100)
    assert nll.shape == (0,) and g.shape == (0, 7)
    nll, g = native._C.cross_entropy_forward(np.zeros((2, 0), np.float64), np.array([-100, -100]), -100)
    assert np.all(nll == 0) and g.shape == (2, 0)
    with pytest.raises(ValueError, match="outside"):
        native._C.cross_entropy_forward(np.zeros((2, 0), np.float64), np.array([0, -100]), -100)
    assert native._C.cross_entropy_backward(np.zeros((0, 7), np.float32), np.zeros(0, np.float32)).shape == (0, 7)


@given(st.tuples(st.integers(0, 4), st.integers(0, 4)), st.integers(0, 4),
       st.sampled_from([np.float32, np.float64, np.int32, np.float16]),
       st.sampled_from([np.float32, np.float64, np.int64]), st.booleans())
def test_fuzz_cross_entropy_backward_binding_never_crashes(shape, scale_len, dtype, scale_dtype, transpose):
    g = np.ones(shape, dtype)
    if transpose:
        g = g.T
    scale = np.full(scale_len, 2, scale_dtype)
    try:
        out = native._C.cross_entropy_backward(g, scale)
    except (ValueError, TypeError):
        pass
    else:
        assert out.shape == g.shape and np.all(out == 2)


@given(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.lists(st.integers(-3, 6), max_size=5),
       st.sampled_from([np.float32, np.float64, np.int32]), st.sampled_from([np.int64, np.int32, np.float64]),
       st.booleans(), st.sampled_from([-100, -1, 3]))
def test_fuzz_cross_entropy_forward_binding_never_crashes(shape, targets, dtype, tdtype, transpose, ignore_index):
    logits = np.zeros(shape, dtype)
    if transpose:
        logits = logits.T
    targets = np.array(targets, tdtype)
    try:
        nll, g = native._C.cross_entropy_forward(logits, targets, ignore_index)
    except (ValueError, TypeError):
        return
    # accepted: (N, V) logits and N int64 targets, each in [0, V) or ignored; zero logits give nll = log V
    N, V = logits.shape
    kept = targets != ignore_index
    assert nll.shape == (N,) and g.shape == (N, V)
    np.testing.assert_allclose(nll[kept], np.log(V), rtol=1e-6)
    assert np.all(nll[~kept] == 0) and np.all(g[~kept] == 0)
