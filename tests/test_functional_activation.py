import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@given(arrays_f64(shapes(max_dims=3), low=-6, high=6))
def test_gelu_and_silu_gradients(x):
    gradcheck(F.gelu, [x])
    gradcheck(F.silu, [x])


@given(arrays_f64(shapes(max_dims=2), low=-800, high=800))
def test_activations_match_definitions_without_overflow(x):
    with np.errstate(over="raise"):
        silu = F.silu(x).data
        gelu = F.gelu(x).data
    np.testing.assert_allclose(silu, x / (1 + np.exp(-np.clip(x, -700, 700))), rtol=1e-12, atol=1e-300)
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
    # 1 + tanh(u) cancels where tanh(u) ~ -1 (x << 0), so the definition itself is only good to a few
    # ulp of x there; a kernel may be more accurate (x * sigmoid(2u) has no cancellation). Allow that.
    definition = 0.5 * x * (1 + np.tanh(u))
    slack = 1e-12 * np.abs(definition) + 4 * np.finfo(np.float64).eps * np.abs(x) + 1e-300
    assert np.all(np.abs(gelu - definition) <= slack), (x, gelu, definition)


@st.composite
def swiglu_inputs(draw):
    lead = draw(shapes(min_dims=1, max_dims=2, max_side=3))
    C, Fd = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    return [draw(arrays_f64(lead + (C,))), draw(arrays_f64((Fd, C))), draw(arrays_f64((Fd, C))),
            draw(arrays_f64((C, Fd)))]


@given(swiglu_inputs())
def test_swiglu_gradient(inputs):
    gradcheck(F.swiglu, inputs)


@given(swiglu_inputs())
def test_swiglu_equals_its_composition(inputs):
    x, wg, wu, wd = inputs
    expected = F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd).data
    np.testing.assert_allclose(F.swiglu(x, wg, wu, wd).data, expected, rtol=1e-12, atol=1e-12)


@given(arrays_f64(shapes(max_dims=3)), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.integers(0, 2**32 - 1))
def test_dropout_gradient_uses_the_same_mask(x, p, seed):
    # a fresh generator with the same seed per call, so every finite-difference pass draws the same mask
    gradcheck(lambda x: F.dropout(x, p, rng=np.random.default_rng(seed)), [x])


def test_dropout_scales_kept_values_and_is_identity_in_eval():
    x = np.ones((200, 200))
    y = F.dropout(x, 0.25, rng=np.random.default_rng(0)).data
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(F.dropout(x, 0.25, training=False).data, x)
    assert not F.dropout(x, 1.0, rng=np.random.default_rng(0)).data.any()


def test_activation_bad_input():
    with pytest.raises(ValueError, match="dropout: p must be a probability"):
        F.dropout(np.ones(3), -0.1)
    with pytest.raises(ValueError, match="dropout: p must be a probability"):
        F.dropout(np.ones(3), 1.5)
    with pytest.raises(TypeError, match="gelu: x must be a floating-point"):
        F.gelu(np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="swiglu: x has shape"):
        F.swiglu(np.ones((2, 3)), np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)))
