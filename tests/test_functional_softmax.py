import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, logits, shapes


@given(x=arrays_f64(shapes(min_dims=1, max_dims=3), low=-5, high=5), data=st.data())
def test_softmax_and_log_softmax_gradients_on_any_axis(backend, x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    gradcheck(lambda x: F.softmax(x, axis=axis), [x])
    gradcheck(lambda x: F.log_softmax(x, axis=axis), [x])


@given(st.integers(1, 4), st.integers(1, 40), st.data())
def test_softmax_is_stable_for_large_logits(backend, N, V, data):
    x = data.draw(logits(N, V, max_scale=1e4, dtype=np.float32))
    with np.errstate(over="raise", invalid="raise"):
        p = F.softmax(x).data
        logp = F.log_softmax(x).data
    assert np.isfinite(p).all() and np.isfinite(logp).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    x64 = x.astype(np.float64)
    expected = x64 - x64.max(-1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(-1, keepdims=True))
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@st.composite
def cross_entropy_inputs(draw):
    N, V = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    x = draw(arrays_f64((N, V), low=-4, high=4))
    targets = np.array(draw(st.lists(st.sampled_from(list(range(V)) + [-100]), min_size=N, max_size=N)))
    return x, targets


@given(cross_entropy_inputs(), st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_gradient_with_ignored_rows(inputs, reduction):
    x, targets = inputs
    gradcheck(lambda x: F.cross_entropy(x, targets, reduction=reduction), [x])


@given(cross_entropy_inputs())
def test_cross_entropy_is_the_mean_nll_of_kept_rows(inputs):
    x, targets = inputs
    keep = targets != -100
    logp = F.log_softmax(x).data
    nll = -logp[np.arange(len(targets)), np.where(keep, targets, 0)] * keep
    np.testing.assert_allclose(F.cross_entropy(x, targets, reduction="none").data, nll, atol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(x, targets, reduction="sum").data, nll.sum(), atol=1e-12)
    expected_mean = nll.sum() / keep.sum() if keep.any() else 0.0
    np.testing.assert_allclose(F.cross_entropy(x, targets).data, expected_mean, atol=1e-12)


@given(st.integers(1, 4), st.integers(2, 50), st.data())
def test_cross_entropy_is_stable_for_large_logits(N, V, data):
    x = data.draw(logits(N, V, max_scale=1e4, dtype=np.float32))
    targets = np.arange(N) % V
    with np.errstate(over="raise", invalid="raise"):
        loss = F.cross_entropy(x, targets).data
    assert np.isfinite(loss) and loss >= 0


def test_cross_entropy_bad_input():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"cross_entropy: targets contain 4, outside \[0, 4\)"):
        F.cross_entropy(x, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="targets must be an integer"):
        F.cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        F.cross_entropy(np.zeros((2, 3, 4)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(x, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="softmax: axis 2 is out of range"):
        F.softmax(x, axis=2)
