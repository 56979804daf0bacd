"""Wrappers over the C++ kernels in `minillm._C`, with the same names and contracts as the
reference kernels. Only the kernels that exist natively are defined here; the backend switch
falls back to the reference for the rest.
"""
import numpy as np

try:
    from .. import _C
except ImportError as error:  # the extension was not built
    _C = None
    IMPORT_ERROR = error
else:
    IMPORT_ERROR = None

AVAILABLE = _C is not None


def _contiguous(a):
    return np.ascontiguousarray(a)


def softmax_forward(x):
    """Softmax over the last axis (see reference.softmax_forward)."""
    return _C.softmax_forward(_contiguous(x))


def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y)) (see reference.softmax_backward)."""
    return _C.softmax_backward(_contiguous(dy.astype(y.dtype, copy=False)), _contiguous(y))


KERNELS = ["softmax_forward", "softmax_backward"] if AVAILABLE else []
