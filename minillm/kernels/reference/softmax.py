"""Softmax, log-softmax and cross-entropy over the last axis."""
import numpy as np


def softmax_forward(x):
    """y_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j (subtracting m changes nothing but overflow)."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def softmax_backward(dy, y):
    """dy_j/dx_i = y_j (delta_ij - y_i), so  dx = y * (dy - sum(dy * y))."""
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


def log_softmax_forward(x):
    """y = x - logsumexp(x) = (x - m) - log(sum(exp(x - m)))."""
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def log_softmax_backward(dy, y):
    """dx = dy - softmax(x) * sum(dy),  softmax(x) = exp(y)."""
    return dy - np.exp(y) * np.sum(dy, axis=-1, keepdims=True)


def cross_entropy_forward(logits, targets, ignore_index=-100, reduction="mean"):
    """loss_n = -log softmax(logits_n)[targets_n] = logsumexp(logits_n) - logits_n[targets_n].

    logits: (N, V), targets: (N,) ints in [0, V) or ignore_index (those rows count as 0 and
    are left out of the mean). reduction: "mean" (over kept rows; 0 if none), "sum" or "none" (N,).
    Returns the loss and the softmax probabilities kept for the backward.
    """
    keep = targets != ignore_index                                     # (N,)
    safe_targets = np.where(keep, targets, 0)
    log_probs = log_softmax_forward(logits)                            # (N, V)
    nll = -log_probs[np.arange(len(targets)), safe_targets] * keep     # (N,)
    if reduction == "mean":
        loss = np.sum(nll) / max(int(keep.sum()), 1)
    elif reduction == "sum":
        loss = np.sum(nll)
    else:
        loss = nll
    return np.asarray(loss, dtype=logits.dtype), np.exp(log_probs)


def cross_entropy_backward(dloss, probs, targets, ignore_index=-100, reduction="mean"):
    """dloss_n/dlogits_n = softmax(logits_n) - onehot(targets_n) for kept rows, 0 for ignored rows;
    times dloss, divided by the number of kept rows for "mean".
    """
    keep = targets != ignore_index
    dlogits = probs.copy()
    dlogits[np.arange(len(targets)), np.where(keep, targets, 0)] -= 1.0
    dlogits *= keep[:, None]
    if reduction == "mean":
        dlogits *= dloss / max(int(keep.sum()), 1)
    elif reduction == "sum":
        dlogits *= dloss
    else:
        dlogits *= dloss[:, None]
    return dlogits
