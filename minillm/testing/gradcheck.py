"""Check analytic gradients against central finite differences, in float64.

For a function f of some inputs, pick a fixed random direction R of the output's shape and
compare, for every input element x_i,
    analytic:  d<f, R>/dx_i  from one reverse pass, f.backward(R)
    numeric:   (<f(x + eps e_i), R> - <f(x - eps e_i), R>) / (2 eps)
An input passes when |analytic - numeric| <= atol + rtol * |numeric| everywhere.
A random R (rather than all ones) catches a backward that mixes up output elements.
"""
import numpy as np

from ..autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and numeric gradients disagree; the message names the worst element."""


def numerical_gradient(run, x, direction, eps=1e-6):
    """d<run(), direction>/dx by central differences, perturbing the array x in place.

    run: a function of no arguments returning a Tensor that depends on x.
    """
    def objective():
        with no_grad():
            return float(np.sum(run().data * direction))

    grad = np.zeros_like(x)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)   # views: writing flat writes x
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = objective()
        flat[i] = original - eps
        minus = objective()
        flat[i] = original
        flat_grad[i] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(run, named_tensors, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Run one backward of run() along a random direction, then compare the .grad of every
    (name, tensor) with finite differences. The tensors must be float64 and require grad."""
    for _, t in named_tensors:
        t.grad = None
    out = run()
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise GradcheckError("gradcheck: the function must return a Tensor that depends on the inputs")
    if out.dtype != np.float64:
        raise GradcheckError(f"gradcheck: the function returned {out.dtype} for float64 inputs; it must keep float64")
    direction = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(direction)

    for name, t in named_tensors:
        analytic = t.grad if t.grad is not None else np.zeros_like(t.data)
        numeric = numerical_gradient(run, t.data, direction, eps)
        excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if excess.size and excess.max() > 0:
            worst = np.unravel_index(np.argmax(excess), excess.shape)
            raise GradcheckError(
                f"gradcheck: gradient of {name} (shape {analytic.shape}) is wrong at index {worst}: "
                f"analytic {analytic[worst]:.8g}, numeric {numeric[worst]:.8g} "
                f"(max abs difference {np.abs(analytic - numeric).max():.3g}, atol {atol}, rtol {rtol})")
    return True


def _as_checked_inputs(inputs):
    """Float inputs become float64 Tensors that require grad (and are checked); others pass as they are."""
    args, checked = [], []
    for i, value in enumerate(inputs):
        array = value.data if isinstance(value, Tensor) else np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            t = Tensor(np.array(array, dtype=np.float64), requires_grad=True)
            args.append(t)
            checked.append((f"input {i}", t))
        else:
            args.append(array)
    return args, checked


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Raise GradcheckError unless fn's backward matches finite differences for every float input.

    fn: takes Tensors (in the order of `inputs`) and returns a Tensor.
    inputs: arrays or Tensors. Floating-point ones become float64 Tensors with requires_grad=True
    and are checked; integer/bool ones (ids, masks) pass through unchanged as constants.
    Returns True when every gradient agrees.
    """
    args, checked = _as_checked_inputs(inputs)
    if not checked:
        raise ValueError("gradcheck: no floating-point input to check")
    return check_gradients(lambda: fn(*args), checked, eps, atol, rtol, seed)


def gradcheck_module(module, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0, forward=None):
    """gradcheck for a whole nn.Module: its float inputs and every parameter are checked.

    The module is cast to float64 in place. forward(module, *args) defaults to module(*args).
    """
    module.to(np.float64)
    forward = forward or (lambda m, *a: m(*a))
    args, checked = _as_checked_inputs(inputs)
    checked += list(module.named_parameters())
    return check_gradients(lambda: forward(module, *args), checked, eps, atol, rtol, seed)
