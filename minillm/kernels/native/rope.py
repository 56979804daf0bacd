"""Rotary position embedding in C++ (csrc/rope.cpp)."""
import numpy as np

from . import _C


def rope_forward(x, cos, sin):
    """y = x * cos + rotate_half(x) * sin (see reference.rope_forward)."""
    x = np.ascontiguousarray(x)
    return _C.rope_forward(x, np.ascontiguousarray(cos, dtype=x.dtype), np.ascontiguousarray(sin, dtype=x.dtype))


def rope_backward(dy, cos, sin):
    """dx = the rotation back of dy (see reference.rope_backward)."""
    dy = np.ascontiguousarray(dy)
    return _C.rope_backward(dy, np.ascontiguousarray(cos, dtype=dy.dtype), np.ascontiguousarray(sin, dtype=dy.dtype))
