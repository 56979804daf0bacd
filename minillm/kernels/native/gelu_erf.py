"""GELU, exact (erf) form, elementwise, in C++ (csrc/gelu_erf.cpp)."""
import numpy as np

from . import _C
from .activation import _call


def gelu_erf_forward(x):
    """y = x Phi(x) (see reference.gelu_erf_forward)."""
    return _call(_C.gelu_erf_forward, np.asarray(x))


def gelu_erf_backward(dy, x):
    """dx = dy * (Phi(x) + x phi(x)) (see reference.gelu_erf_backward)."""
    x = np.asarray(x)
    return _call(_C.gelu_erf_backward, np.asarray(dy, dtype=x.dtype), x)
