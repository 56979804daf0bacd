"""The autograd engine: every op's backward against finite differences, broadcasting,
accumulation, no_grad, detach, and errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minillm as mm
from minillm.testing import GradcheckError, gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@st.composite
def broadcastable_pair(draw):
    """Two shapes that broadcast together (one may have fewer axes or size-1 axes)."""
    a, b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)).input_shapes
    return draw(arrays_f64(a)), draw(arrays_f64(b))


@given(broadcastable_pair())
def test_add_sub_mul_gradients_with_broadcasting(pair):
    a, b = pair
    gradcheck(lambda a, b: a + b, [a, b])
    gradcheck(lambda a, b: a - b, [a, b])
    gradcheck(lambda a, b: a * b, [a, b])


@given(broadcastable_pair())
def test_div_gradient_with_broadcasting(pair):
    a, b = pair
    b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)   # keep away from division by ~0
    gradcheck(lambda a, b: a / b, [a, b])


@given(arrays_f64(shapes()), st.sampled_from([2, 3, 0.5, -1.0]))
def test_pow_gradient(a, p):
    a = np.abs(a) + 0.5
    gradcheck(lambda a: a ** p, [a])
    gradcheck(lambda a: -a, [a])


def test_pow_tensor_exponent_gradient():
    rng = np.random.default_rng(0)
    gradcheck(lambda a, b: a ** b, [rng.uniform(0.5, 2, (3, 4)), rng.normal(size=(4,))])


@given(arrays_f64(shapes(max_dims=3)))
def test_exp_log_tanh_gradients(a):
    gradcheck(lambda a: a.exp(), [a])
    gradcheck(lambda a: a.tanh(), [a])
    gradcheck(lambda a: (a * a + 1.0).log(), [a])


@st.composite
def matmul_operands(draw):
    """a @ b with 1-D operands or broadcast batch axes."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch_a = draw(st.sampled_from([(), (2,), (1,), (3, 2)]))
    batch_b = draw(st.sampled_from([(), (2,), (1,)])) if batch_a != (3, 2) else draw(st.sampled_from([(), (2,), (1, 2)]))
    a_shape = (k,) if draw(st.booleans()) and not batch_a else batch_a + (m, k)
    b_shape = (k,) if draw(st.booleans()) and not batch_b else batch_b + (k, n)
    return draw(arrays_f64(a_shape)), draw(arrays_f64(b_shape))


@given(matmul_operands())
def test_matmul_gradient(ab):
    a, b = ab
    gradcheck(lambda a, b: (a @ b) * 1.0, [a, b])


@given(arrays_f64(shapes(max_dims=3)), st.booleans(), st.data())
def test_sum_mean_gradients_over_any_axes(a, keepdims, data):
    axis = data.draw(st.sampled_from([None] + list(range(-a.ndim, a.ndim)) + ([(0, a.ndim - 1)] if a.ndim > 1 else [])))
    gradcheck(lambda a: a.sum(axis=axis, keepdims=keepdims), [a])
    gradcheck(lambda a: a.mean(axis=axis, keepdims=keepdims), [a])


@given(shapes(max_dims=3), st.integers(0, 2**32 - 1), st.booleans(), st.data())
def test_max_gradient(shape, seed, keepdims, data):
    # distinct values at least 0.25 apart, so a finite-difference step never changes the argmax
    a = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.25 - 1.0
    axis = data.draw(st.sampled_from([None] + list(range(a.ndim))))
    gradcheck(lambda a: a.max(axis=axis, keepdims=keepdims), [a])


def test_max_splits_gradient_between_ties():
    a = mm.tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    a.max().backward()
    np.testing.assert_array_equal(a.grad, [0.0, 0.5, 0.5])


@given(arrays_f64(shapes(min_dims=2, max_dims=3)))
def test_reshape_and_transpose_gradients(a):
    gradcheck(lambda a: a.reshape(-1) * 2.0, [a])
    gradcheck(lambda a: a.transpose() * 1.0, [a])
    gradcheck(lambda a: a.transpose(0, -1) * 1.0, [a])
    gradcheck(lambda a: a.T * 1.0, [a])


@given(arrays_f64(shapes(min_dims=2, max_dims=3, min_side=2)), st.data())
def test_indexing_gradients(a, data):
    i = data.draw(st.integers(0, a.shape[0] - 1))
    gradcheck(lambda a: a[i], [a])
    gradcheck(lambda a: a[1:, ::-1], [a])
    gradcheck(lambda a: a[np.array([0, 0, 1])], [a])     # repeated rows get both gradients
    mask = a > 0                                          # a fixed boolean mask
    gradcheck(lambda a: a[mask] * 1.0, [a])


@given(st.lists(arrays_f64((2, 3)), min_size=1, max_size=3), st.integers(0, 1))
def test_concat_and_stack_gradients(parts, axis):
    gradcheck(lambda *xs: mm.concat(xs, axis=axis), parts)
    gradcheck(lambda *xs: mm.stack(xs, axis=axis), parts)


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = mm.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = (x * x + x * 3.0).sum()          # x used three times
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3.0)
    y2 = (x * 2.0).sum()
    y2.backward()                        # a second backward adds to .grad
    np.testing.assert_allclose(x.grad, 2 * x.data + 5.0)


def test_diamond_graph_counts_each_path_once():
    x = mm.tensor(np.array(2.0), requires_grad=True)
    a = x * 3.0
    b = a * a + a                        # d/dx = (2a + 1) * 3 = 39 at x = 2
    b.backward()
    assert x.grad == pytest.approx(39.0)


def test_no_grad_records_nothing_and_detach_cuts_the_tape():
    x = mm.tensor(np.ones(3), requires_grad=True)
    with mm.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y._node is None
    z = (x.detach() * 2.0 + x).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))
    assert mm.is_grad_enabled()


def test_scalars_become_float32_and_arrays_keep_dtype():
    assert mm.tensor([1.0, 2.0]).dtype == np.float32
    assert mm.tensor(np.zeros(2)).dtype == np.float64
    assert (mm.tensor(np.zeros(2, np.float32)) + 1.0).dtype == np.float32
    assert (mm.tensor(np.zeros(2, np.float32)) * np.float64(2)).dtype == np.float32


def test_backward_errors_are_clear():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mm.tensor(np.ones(2)).backward()
    x = mm.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="grad must be given"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2.0).backward(np.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        mm.tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(ValueError, match="matmul"):
        mm.tensor(np.ones((2, 3))) @ mm.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="stack"):
        mm.stack([mm.tensor(np.ones(2)), mm.tensor(np.ones(3))])
    with pytest.raises(ValueError, match="concat"):
        mm.concat([mm.tensor(np.ones((2, 2))), mm.tensor(np.ones((3, 3)))], axis=0)


def test_gradcheck_catches_a_wrong_backward():
    class WrongSquare(mm.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save(x)
            return x * x

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved
            return dy * x            # should be 2 x dy

    with pytest.raises(GradcheckError, match="wrong at index"):
        gradcheck(lambda x: WrongSquare.apply(x), [np.array([1.0, -2.0, 3.0])])


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = mm.tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


def test_the_old_module_path_minillm_tensor_still_works():
    """`from minillm.tensor import Tensor, no_grad` (the engine's old home) works, and importing it
    does not take the name mm.tensor away from the tensor() function. In a fresh interpreter, since
    this process may have imported the module already."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import minillm as mm\n"
            "from minillm.tensor import Function, Tensor, no_grad\n"
            "assert Tensor is mm.Tensor and no_grad is mm.no_grad and Function is mm.Function\n"
            "t = mm.tensor([1.0, 2.0], requires_grad=True)\n"
            "(t * t).sum().backward()\n"
            "print(type(t).__name__, t.grad.tolist())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=root, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Tensor", "[2.0,", "4.0]"]
