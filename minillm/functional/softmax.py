"""softmax, log_softmax and cross_entropy as autograd nodes."""
import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ._checks import as_input, check_float, check_ndim, normalize_axis


def _to_last(a, axis):
    return a if axis == a.ndim - 1 else np.moveaxis(a, axis, -1)


def _from_last(a, axis):
    return a if axis == a.ndim - 1 else np.moveaxis(a, -1, axis)


class SoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, axis):
        y = _from_last(kernels.softmax_forward(_to_last(x, axis)), axis)
        ctx.save(y, axis)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, axis = ctx.saved
        return _from_last(kernels.softmax_backward(_to_last(dy, axis), _to_last(y, axis)), axis)


class LogSoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, axis):
        y = _from_last(kernels.log_softmax_forward(_to_last(x, axis)), axis)
        ctx.save(y, axis)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, axis = ctx.saved
        return _from_last(kernels.log_softmax_backward(_to_last(dy, axis), _to_last(y, axis)), axis)


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along axis."""
    x = as_input(x)
    check_float("softmax", x=x)
    check_ndim("softmax", "x", x, min_ndim=1)
    return SoftmaxFn.apply(x, normalize_axis("softmax", axis, x.ndim))


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along axis."""
    x = as_input(x)
    check_float("log_softmax", x=x)
    check_ndim("log_softmax", "x", x, min_ndim=1)
    return LogSoftmaxFn.apply(x, normalize_axis("log_softmax", axis, x.ndim))


class CrossEntropyFn(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, reduction):
        # state: whatever the kernel's backward needs (the reference keeps the probabilities,
        # the native kernel the unscaled gradient it computed in the same pass)
        loss, state = kernels.cross_entropy_forward(logits, targets, ignore_index, reduction)
        ctx.save(state, targets, ignore_index, reduction)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        state, targets, ignore_index, reduction = ctx.saved
        return kernels.cross_entropy_backward(dloss, state, targets, ignore_index, reduction)


class LinearCrossEntropyFn(Function):
    """The mean cross-entropy of the logits x W^T, one node: an LM head and its loss.

    forward:  logits = x W^T (N, V);  loss, state = cross_entropy(logits, targets) -- and the logits
              are dropped at once: only the kernel's state (N, V) is kept for the backward, where the
              composition F.cross_entropy(F.linear(x, W), targets) holds the logits until the end too.
    backward: dlogits from the state; dx = dlogits W, dW = dlogits^T x (linear's backward).
    """

    @staticmethod
    def forward(ctx, x, w, targets, ignore_index):
        loss, state = kernels.cross_entropy_forward(kernels.linear_forward(x, w), targets, ignore_index, "mean")
        ctx.save(x, w, state, targets, ignore_index)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        x, w, state, targets, ignore_index = ctx.saved
        dlogits = kernels.cross_entropy_backward(dloss, state, targets, ignore_index, "mean")
        dx, dw, _ = kernels.linear_backward(dlogits, x, w, has_bias=False)
        return dx, dw


def linear_cross_entropy(x, w, targets, ignore_index=-100):
    """cross_entropy(x W^T, targets) ("mean" over the rows kept) as one node that never returns the logits.

    x: (N, C), w: (V, C) (an LM head, or a tied embedding table), targets: (N,) ints in [0, V) or
    ignore_index. Equals F.cross_entropy(F.linear(x, w), targets, ignore_index).
    """
    x, w = as_input(x), as_input(w)
    targets = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    check_float("linear_cross_entropy", x=x, w=w)
    check_ndim("linear_cross_entropy", "x", x, ndim=2)
    check_ndim("linear_cross_entropy", "w", w, ndim=2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear_cross_entropy: x has shape {x.shape} and w {w.shape}; their last axes must match")
    _check_targets("linear_cross_entropy", targets, x.shape[0], w.shape[0], ignore_index)
    return LinearCrossEntropyFn.apply(x, w, targets, ignore_index)


def _check_targets(fn, targets, N, V, ignore_index):
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"{fn}: targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != (N,):
        raise ValueError(f"{fn}: logits have {N} rows so targets must have shape ({N},), got {targets.shape}")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"{fn}: targets contain {targets[bad][0]}, outside [0, {V}) "
                         f"and not ignore_index ({ignore_index})")


REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Mean (or sum, or per-row) of -log softmax(logits)[target].

    logits: (N, V) float; targets: (N,) ints in [0, V), or ignore_index for rows to leave out.
    With reduction="mean" the mean is over the rows kept (0 if every row is ignored).
    """
    logits = as_input(logits)
    targets = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    check_float("cross_entropy", logits=logits)
    check_ndim("cross_entropy", "logits", logits, ndim=2)
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_targets("cross_entropy", targets, logits.shape[0], logits.shape[1], ignore_index)
    return CrossEntropyFn.apply(logits, targets, ignore_index, reduction)
