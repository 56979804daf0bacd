import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm as mm
import minillm.functional as F
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@st.composite
def linear_inputs(draw):
    lead = draw(shapes(min_dims=1, max_dims=3, max_side=4))
    n_in, n_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return draw(arrays_f64(lead + (n_in,))), draw(arrays_f64((n_out, n_in))), draw(arrays_f64((n_out,)))


@given(linear_inputs())
def test_linear_matches_its_definition(xwb):
    x, w, b = xwb
    np.testing.assert_allclose(F.linear(x, w, b).data, x @ w.T + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.linear(x, w).data, x @ w.T, rtol=1e-12, atol=1e-12)


@given(linear_inputs())
def test_linear_gradient(xwb):
    gradcheck(F.linear, list(xwb))
    gradcheck(lambda x, w: F.linear(x, w), list(xwb[:2]))


@given(st.integers(1, 6), st.integers(1, 4), shapes(min_dims=1, max_dims=2, max_side=4), st.data())
def test_embedding_gradient_sums_repeated_ids(V, C, ids_shape, data):
    ids = data.draw(st.lists(st.integers(0, V - 1), min_size=int(np.prod(ids_shape)),
                             max_size=int(np.prod(ids_shape)))).copy()
    ids = np.array(ids, dtype=np.int64).reshape(ids_shape)
    weight = data.draw(arrays_f64((V, C)))
    np.testing.assert_array_equal(F.embedding(ids, weight).data, weight[ids])
    gradcheck(lambda w: F.embedding(ids, w), [weight])


def test_linear_bad_input_names_the_argument():
    x, w = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"linear: x has shape \(2, 5\)"):
        F.linear(np.ones((2, 5), np.float32), w)
    with pytest.raises(ValueError, match="linear: b has shape"):
        F.linear(x, w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="linear: w must have 2 dimensions"):
        F.linear(x, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="share one dtype"):
        F.linear(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="floating-point"):
        F.linear(x.astype(np.int32), w)


def test_embedding_bad_ids():
    w = np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"embedding: ids contains 5, outside \[0, 5\)"):
        F.embedding(np.array([0, 5]), w)
    with pytest.raises(ValueError, match="outside"):
        F.embedding(np.array([-1]), w)
    with pytest.raises(TypeError, match="integer"):
        F.embedding(np.array([0.0, 1.0]), w)
    assert F.embedding(mm.tensor(np.array([1, 2])), w).shape == (2, 2)
