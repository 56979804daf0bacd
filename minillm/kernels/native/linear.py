"""GEMM (csrc/gemm.cpp) and the layers built on it: linear and the SwiGLU feed-forward.

Same names and contracts as the reference kernels. Leading axes are flattened to rows, and the
transposes a layer needs are flags to the GEMM, never copies:
    linear forward   y = x W^T + b      matmul(x, W, trans_b=True, bias=b)     (NT)
    linear backward  dx = dy W          matmul(dy, W)                          (NN)
                     dW = dy^T x        matmul(dy, x, trans_a=True)            (TN)
"""
import numpy as np

from . import _C
from .activation import silu_backward, silu_forward


def _rows(a):
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """C = op(a) op(b) (see reference.matmul), in C++."""
    return _C.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a=trans_a, trans_b=trans_b, out=out,
                     accumulate=accumulate)


def linear_forward(x, w, b=None):
    """y = x W^T + b with the bias added inside the GEMM.  x: (..., in), w: (out, in)."""
    y = _C.matmul(_rows(x), np.ascontiguousarray(w), trans_b=True, bias=None if b is None else np.ascontiguousarray(b))
    return y.reshape(*x.shape[:-1], w.shape[0])


def linear_backward(dy, x, w, has_bias=True):
    """dx = dy W, dW = dy^T x, db = column sums of dy (see reference.linear_backward)."""
    dy2, x2 = _rows(dy), _rows(x)
    w = np.ascontiguousarray(w)
    dx = _C.matmul(dy2, w).reshape(x.shape)
    dw = _C.matmul(dy2, x2, trans_a=True)
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dw, db


def swiglu_forward(x, w_gate, w_up, w_down):
    """y = (silu(x W_gate^T) * (x W_up^T)) W_down^T, all in C++ but the product (see reference.swiglu_forward)."""
    a = linear_forward(x, w_gate)
    b = linear_forward(x, w_up)
    h = silu_forward(a) * b
    return linear_forward(h, w_down), a, b, h


def swiglu_backward(dy, x, w_gate, w_up, w_down, a, b, h):
    """See reference.swiglu_backward; dx sums both branches by accumulating in the GEMM."""
    dh, dw_down, _ = linear_backward(dy, h, w_down, has_bias=False)
    da = silu_backward(dh * b, a)
    db = dh * silu_forward(a)
    da2, db2, x2 = _rows(da), _rows(db), _rows(x)
    dx = _C.matmul(da2, np.ascontiguousarray(w_gate))
    _C.matmul(db2, np.ascontiguousarray(w_up), out=dx, accumulate=True)          # dx += db W_up
    dw_gate = _C.matmul(da2, x2, trans_a=True)
    dw_up = _C.matmul(db2, x2, trans_a=True)
    return dx.reshape(x.shape), dw_gate, dw_up, dw_down

