"""The quantized matmul and activation quantization in C++ (csrc/quant.cpp).

Same names and contracts as reference/quant.py; weight quantization itself runs once, offline,
on the reference (quantize_weights, dequantize_weights).
"""
import numpy as np

from . import _C
from ..reference.quant import SCHEMES, check_scheme


def quantize_activations(x):
    """x (M, K) -> (xq, xd, xs), in C++ (see reference.quantize_activations)."""
    return _C.quantize_activations(np.ascontiguousarray(x, dtype=np.float32))


def quant_matmul(x, scheme, q, scale, min=None, bias=None):
    """y (M, N) = x W^T (+ bias) on quantized W, in C++ (see reference.quant_matmul)."""
    check_scheme(scheme)
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    return _C.quant_matmul(x=np.ascontiguousarray(x, dtype=np.float32), scheme=SCHEMES.index(scheme), q=q,
                           scale=scale, min=min, bias=bias)

