"""GELU, SiLU, the fused SwiGLU feed-forward, and dropout."""
import math

import numpy as np

from .linear import linear_backward

_GELU_C = math.sqrt(2.0 / math.pi)   # a Python float, so float32 stays float32


def gelu_forward(x):
    """GELU, tanh approximation (GPT-2):  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x ** 3)))


def gelu_backward(dy, x):
    """dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u)."""
    t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x))


def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)) = exp(x) / (1 + exp(x)); with e = exp(-|x|) <= 1 the first form
    serves x >= 0 and the second x < 0, so nothing overflows and small values keep full precision."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def silu_forward(x):
    """SiLU (swish):  y = x * sigma(x)."""
    return x * sigmoid(x)


def silu_backward(dy, x):
    """dy/dx = sigma(x) (1 + x (1 - sigma(x)))."""
    s = sigmoid(x)
    return dy * s * (1.0 + x * (1.0 - s))


def swiglu_forward(x, w_gate, w_up, w_down):
    """y = (silu(x W_gate^T) * (x W_up^T)) W_down^T.

    x: (..., C), w_gate, w_up: (F, C), w_down: (C, F). Returns y and the activations
    (a = x W_gate^T, b = x W_up^T, h = silu(a) * b) kept for the backward.
    """
    a = x @ w_gate.T               # (..., F)
    b = x @ w_up.T                 # (..., F)
    h = silu_forward(a) * b        # (..., F)
    return h @ w_down.T, a, b, h


def swiglu_backward(dy, x, w_gate, w_up, w_down, a, b, h):
    """Backward through y = h W_down^T, h = silu(a) * b, a = x W_gate^T, b = x W_up^T:
        dh = dy W_down,  dW_down = dy^T h
        da = dh * b * silu'(a),  db = dh * silu(a)
        dx = da W_gate + db W_up,  dW_gate = da^T x,  dW_up = db^T x
    """
    dh, dw_down, _ = linear_backward(dy, h, w_down, has_bias=False)
    da = silu_backward(dh * b, a)
    db = dh * silu_forward(a)
    dx_gate, dw_gate, _ = linear_backward(da, x, w_gate, has_bias=False)
    dx_up, dw_up, _ = linear_backward(db, x, w_up, has_bias=False)
    return dx_gate + dx_up, dw_gate, dw_up, dw_down


def dropout_forward(x, p, rng):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element.

    Returns y and the scaled mask m / (1 - p), which is also the backward's factor.
    p = 1 drops everything (y = 0).
    """
    if p >= 1.0:
        scale = np.zeros_like(x)
    else:
        scale = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * scale, scale


def dropout_backward(dy, scale):
    """dx = dy * m / (1 - p)."""
    return dy * scale
