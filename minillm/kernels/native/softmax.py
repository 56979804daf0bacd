"""Softmax and log-softmax over the last axis (csrc/softmax.cpp) and the fused cross-entropy
(csrc/loss.cpp) in C++."""
import numpy as np

from . import _C


def softmax_forward(x):
    """Softmax over the last axis (see reference.softmax_forward)."""
    return _C.softmax_forward(np.ascontiguousarray(x))


def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y)) (see reference.softmax_backward)."""
    return _C.softmax_backward(np.ascontiguousarray(dy, dtype=y.dtype), np.ascontiguousarray(y))


def log_softmax_forward(x):
    """y = x - logsumexp(x) over the last axis (see reference.log_softmax_forward)."""
    return _C.log_softmax_forward(np.ascontiguousarray(x))


def log_softmax_backward(dy, y):
    """dx = dy - exp(y) * sum(dy) (see reference.log_softmax_backward)."""
    return _C.log_softmax_backward(np.ascontiguousarray(dy, dtype=y.dtype), np.ascontiguousarray(y))


def cross_entropy_forward(logits, targets, ignore_index=-100, reduction="mean"):
    """loss_n = logsumexp(logits_n) - logits_n[targets_n] (see reference.cross_entropy_forward).

    One pass per row computes the loss and the unscaled gradient g = softmax - onehot (0 on ignored
    rows); g is the state returned for the backward, which only has to scale it by dloss.
    """
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    nll, g = _C.cross_entropy_forward(np.ascontiguousarray(logits), targets, int(ignore_index))
    if reduction == "mean":
        kept = int(np.count_nonzero(targets != ignore_index))
        loss = np.sum(nll, dtype=np.float64) / max(kept, 1)
    elif reduction == "sum":
        loss = np.sum(nll, dtype=np.float64)
    else:
        loss = nll
    return np.asarray(loss, dtype=nll.dtype), g


def cross_entropy_backward(dloss, g, targets, ignore_index=-100, reduction="mean"):
    """dlogits = g * dloss (divided by the kept rows for "mean"); g is cross_entropy_forward's state."""
    N = g.shape[0]
    if reduction == "none":
        row_scale = np.ascontiguousarray(dloss, dtype=g.dtype).reshape(N)
    else:
        scale = float(dloss)
        if reduction == "mean":
            scale /= max(int(np.count_nonzero(np.asarray(targets) != ignore_index)), 1)
        row_scale = np.full(N, scale, dtype=g.dtype)
    return _C.cross_entropy_backward(g, row_scale)

