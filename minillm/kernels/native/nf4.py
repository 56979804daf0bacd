"""NF4 weights in C++ (csrc/nf4.cpp): dequantize, and the matmul that dequantizes a panel at a time.

Same names and contracts as reference/nf4.py; quantizing runs once, offline, on the reference.
"""
import numpy as np

from . import _C


def dequantize_nf4(q, scale, scale2):
    """The float32 (N, K) weight (see reference.dequantize_nf4), in C++."""
    return _C.nf4_dequantize(q=np.ascontiguousarray(q), scale=np.ascontiguousarray(scale),
                             scale2=np.ascontiguousarray(scale2, dtype=np.float32))


def nf4_matmul(x, q, scale, scale2, bias=None):
    """y (M, N) = x dequantize(W)^T (+ bias), in C++ (see reference.nf4_matmul)."""
    return _C.nf4_matmul(x=np.ascontiguousarray(x, dtype=np.float32), q=np.ascontiguousarray(q),
                         scale=np.ascontiguousarray(scale), scale2=np.ascontiguousarray(scale2, dtype=np.float32),
                         bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32))
