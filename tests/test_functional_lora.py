"""F.lora_linear and F.lora_quantized_linear: one node each, equal to their definition
x W^T + b + s (x * mask) A^T B^T; every gradient (dx, dA, dB, and dW, db when asked) passes the float64
finite-difference check on Hypothesis shapes; over a quantized W, dx is the straight-through
g dequantize(W) plus the adapter's term; a frozen W gets no gradient; bad shapes get a clear error."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm import kernels
from minillm.autograd import Tensor
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@st.composite
def lora_inputs(draw, K=None):
    lead = draw(shapes(min_dims=1, max_dims=3, max_side=4))
    K = K or draw(st.integers(1, 6))
    N, r = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    x, w, b = draw(arrays_f64(lead + (K,))), draw(arrays_f64((N, K))), draw(arrays_f64((N,)))
    A, B = draw(arrays_f64((r, K))), draw(arrays_f64((N, r)))
    scale = draw(st.sampled_from([0.5, 2.0, 16 / np.sqrt(r)]))
    p = draw(st.sampled_from([0.0, 0.5]))
    mask = F.dropout_mask(x.shape, p, np.random.default_rng(draw(st.integers(0, 99))), np.dtype(np.float64))
    return x, w, b, A, B, scale, mask


@given(lora_inputs())
def test_lora_linear_matches_its_definition(inputs):
    x, w, b, A, B, scale, mask = inputs
    xd = x if mask is None else x * mask
    np.testing.assert_allclose(F.lora_linear(x, w, b, A, B, scale, mask).data,
                               x @ w.T + b + scale * (xd @ A.T) @ B.T, rtol=1e-10, atol=1e-10)


@given(lora_inputs())
def test_lora_linear_gradient_of_x_A_B_and_the_base(inputs):
    x, w, b, A, B, scale, mask = inputs
    gradcheck(lambda x, A, B: F.lora_linear(x, w, b, A, B, scale, mask), [x, A, B])
    gradcheck(lambda x, w, b, A, B: F.lora_linear(x, w, b, A, B, scale, mask), [x, w, b, A, B])
    gradcheck(lambda x, A, B: F.lora_linear(x, w, None, A, B, scale, mask), [x, A, B])


def test_a_frozen_base_gets_no_gradient():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w, b = Tensor(rng.standard_normal((5, 4))), Tensor(rng.standard_normal(5))
    A, B = (Tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 4), (5, 2)))
    F.lora_linear(x, w, b, A, B, 2.0).sum().backward()
    assert w.grad is None and b.grad is None
    assert x.grad is not None and A.grad is not None and B.grad is not None


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1", "nf4"])
@given(data=st.data())
def test_lora_quantized_gradients_are_the_adapters_and_straight_through(scheme, data):
    x, w, b, A, B, scale, mask = data.draw(lora_inputs(K=64))
    arrays = kernels.quantize_weights(w.astype(np.float32), scheme)
    q, qscale = arrays["q"], arrays["scale"]
    third = arrays.get("min", arrays.get("scale2"))
    run = lambda x, A, B: F.lora_quantized_linear(x, scheme, q, qscale, third, b, A, B, scale, mask)   # noqa: E731
    # The base term is constant in A and B, and the output is linear in each single entry of A or of B,
    # so central differences have no truncation error at any step: a step of 1e-3 keeps the float64
    # rounding of the large base term (|x W^T| up to ~1e4, i.e. ~1e-12 absolute) from reaching 1e-6
    # as it did with 1e-6 steps (a q4_1 case Hypothesis found: off by 2.2e-6).
    gradcheck(lambda A, B: run(x, A, B), [A, B], eps=1e-3)
    wd = kernels.dequantize_weights(scheme, q, qscale, third).astype(np.float64)
    xs, As, Bs = (Tensor(a, requires_grad=True) for a in (x, A, B))
    xf, Af, Bf = (Tensor(a, requires_grad=True) for a in (x, A, B))
    g = np.random.default_rng(1).standard_normal(x.shape[:-1] + (w.shape[0],))
    (run(xs, As, Bs) * g).sum().backward()
    (F.lora_linear(xf, wd, b, Af, Bf, scale, mask) * g).sum().backward()
    for ours, expected in ((xs, xf), (As, Af), (Bs, Bf)):   # dx = g dequantize(W) + s ((g B) A) * mask
        np.testing.assert_allclose(ours.grad, expected.grad, rtol=1e-9, atol=1e-9)


def test_bad_shapes_get_a_clear_error():
    x, w = np.zeros((2, 4)), np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"lora_linear: A has shape \(2, 5\)"):
        F.lora_linear(x, w, None, np.zeros((2, 5)), np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match=r"lora_linear: B has shape"):
        F.lora_linear(x, w, None, np.zeros((2, 4)), np.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match="mask has shape"):
        F.lora_linear(x, w, None, np.zeros((2, 4)), np.zeros((3, 2)), 1.0, mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        F.lora_linear(x, w, None, np.zeros((2, 4)), np.zeros((3, 2)), float("nan"))
