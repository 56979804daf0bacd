"""GELU (tanh approximation) and SiLU, elementwise, in C++ (csrc/activation.cpp)."""
import numpy as np

from . import _C


def _call(fn, *arrays):
    """fn on C-contiguous arrays; 0-d arrays go through as shape (1,) and come back 0-d."""
    shape = arrays[-1].shape
    out = fn(*(np.ascontiguousarray(a).reshape(-1) if a.ndim == 0 else np.ascontiguousarray(a) for a in arrays))
    return out.reshape(shape)


def gelu_forward(x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (see reference.gelu_forward)."""
    return _call(_C.gelu_forward, np.asarray(x))


def gelu_backward(dy, x):
    """dx = dy * gelu'(x) (see reference.gelu_backward)."""
    x = np.asarray(x)
    return _call(_C.gelu_backward, np.asarray(dy, dtype=x.dtype), x)


def silu_forward(x):
    """y = x * sigmoid(x) (see reference.silu_forward)."""
    return _call(_C.silu_forward, np.asarray(x))


def silu_backward(dy, x):
    """dx = dy * sigmoid(x) (1 + x (1 - sigmoid(x))) (see reference.silu_backward)."""
    x = np.asarray(x)
    return _call(_C.silu_backward, np.asarray(dy, dtype=x.dtype), x)

