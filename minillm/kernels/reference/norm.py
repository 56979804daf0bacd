"""RMSNorm and LayerNorm over the last axis."""
import numpy as np


def _rows(a):
    """The axes of a except the last: the ones a weight gradient is summed over."""
    return tuple(range(a.ndim - 1))


def rms_norm_forward(x, weight, eps):
    """y = x / rms(x) * weight,  rms(x) = sqrt(mean(x**2, axis=-1) + eps).

    x: (..., C), weight: (C,). Returns y and the per-row 1/rms kept for the backward.
    """
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)   # (..., 1)
    return x * inv_rms * weight, inv_rms


def rms_norm_backward(dy, x, weight, inv_rms):
    """With x_hat = x * inv_rms:
        dweight = sum over rows of dy * x_hat
        dx      = inv_rms * (g - x_hat * mean(g * x_hat, axis=-1)),  g = dy * weight
    (the second term is the gradient flowing through rms(x) itself).
    """
    x_hat = x * inv_rms
    g = dy * weight
    dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    dweight = np.sum(dy * x_hat, axis=_rows(dy))
    return dx, dweight


def layer_norm_forward(x, weight, bias, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis.

    x: (..., C), weight, bias: (C,). Returns y, x_hat and the per-row 1/std for the backward.
    """
    mean = np.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    inv_std = 1.0 / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    x_hat = xc * inv_std
    return x_hat * weight + bias, x_hat, inv_std


def layer_norm_backward(dy, x_hat, weight, inv_std):
    """With g = dy * weight (the gradient reaching x_hat):
        dx      = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))
        dweight = sum over rows of dy * x_hat,   dbias = sum over rows of dy
    (mean(g) flows through the mean, x_hat * mean(g x_hat) through the variance).
    """
    g = dy * weight
    dx = inv_std * (g - np.mean(g, axis=-1, keepdims=True)
                    - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    return dx, np.sum(dy * x_hat, axis=_rows(dy)), np.sum(dy, axis=_rows(dy))
