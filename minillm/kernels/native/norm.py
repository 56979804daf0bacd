"""RMSNorm and LayerNorm over the last axis in C++ (csrc/norm.cpp)."""
import numpy as np

from . import _C


def rms_norm_forward(x, weight, eps):
    """y = x * inv_rms * weight; returns y and inv_rms (..., 1) (see reference.rms_norm_forward)."""
    x = np.ascontiguousarray(x)
    return _C.rms_norm_forward(x, np.ascontiguousarray(weight, dtype=x.dtype), float(eps))


def rms_norm_backward(dy, x, weight, inv_rms):
    """(dx, dweight) (see reference.rms_norm_backward)."""
    x = np.ascontiguousarray(x)
    return _C.rms_norm_backward(dy=np.ascontiguousarray(dy, dtype=x.dtype), x=x,
                                weight=np.ascontiguousarray(weight, dtype=x.dtype),
                                inv_rms=np.ascontiguousarray(inv_rms, dtype=x.dtype))


def layer_norm_forward(x, weight, bias, eps):
    """y = x_hat * weight + bias; returns y, x_hat and inv_std (..., 1) (see reference.layer_norm_forward)."""
    x = np.ascontiguousarray(x)
    return _C.layer_norm_forward(x=x, weight=np.ascontiguousarray(weight, dtype=x.dtype),
                                 bias=np.ascontiguousarray(bias, dtype=x.dtype), eps=float(eps))


def layer_norm_backward(dy, x_hat, weight, inv_std):
    """(dx, dweight, dbias) (see reference.layer_norm_backward)."""
    x_hat = np.ascontiguousarray(x_hat)
    return _C.layer_norm_backward(dy=np.ascontiguousarray(dy, dtype=x_hat.dtype), x_hat=x_hat,
                                  weight=np.ascontiguousarray(weight, dtype=x_hat.dtype),
                                  inv_std=np.ascontiguousarray(inv_std, dtype=x_hat.dtype))

