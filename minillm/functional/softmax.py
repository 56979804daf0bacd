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
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"cross_entropy: targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: logits have shape {logits.shape} so targets must have shape "
                         f"({logits.shape[0]},), got {targets.shape}")
    V = logits.shape[1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"cross_entropy: targets contain {targets[bad][0]}, outside [0, {V}) "
                         f"and not ignore_index ({ignore_index})")
    return CrossEntropyFn.apply(logits, targets, ignore_index, reduction)
