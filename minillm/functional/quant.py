"""linear on quantized weights as an autograd node (weights frozen; the gradient flows to x)."""
from .. import kernels
from ..autograd import Function
from ._checks import as_input, check_float


class QuantizedLinearFn(Function):
    @staticmethod
    def forward(ctx, x, scheme, q, scale, min, bias):
        ctx.save(x.shape, scheme, q, scale, min, bias is not None)
        y = kernels.quant_matmul(x.reshape(-1, x.shape[-1]), scheme, q, scale, min, bias)   # (rows, N)
        return y.reshape(*x.shape[:-1], q.shape[0]).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, dy):
        x_shape, scheme, q, scale, min, has_bias = ctx.saved
        w = kernels.dequantize_weights(scheme, q, scale, min).astype(dy.dtype, copy=False)    # (N, K)
        dx = (dy.reshape(-1, w.shape[0]) @ w).reshape(x_shape)
        db = dy.reshape(-1, w.shape[0]).sum(axis=0) if has_bias else None
        return dx, None, None, None, None, db


def quantized_linear(x, scheme, q, scale, min=None, bias=None):
    """y = x W^T + b with W quantized (see minillm.kernels.reference.quant for the schemes).

    x: (..., K) float; q, scale, min: W's arrays in the scheme's layout; bias: (N,) or None.
    x is quantized to int8 per group of 32 on the fly. Backward is straight-through: the gradient of
    x dequantize(W)^T + b, i.e. dx = dy dequantize(W), db = sum of dy over rows; the quantized
    weights themselves take no gradient (QLoRA trains adapters beside them).
    """
    x = as_input(x)
    bias = None if bias is None else as_input(bias)
    check_float("quantized_linear", x=x, bias=bias)
    K = x.shape[-1] if x.ndim else 0
    expected = q.shape[1] * (2 if scheme in ("q4_0", "q4_1", "nf4") else 1)
    if x.ndim < 1 or K != expected:
        raise ValueError(f"quantized_linear: x has shape {x.shape} but the weight has {expected} input features")
    if bias is not None and bias.shape != (q.shape[0],):
        raise ValueError(f"quantized_linear: bias has shape {bias.shape}, expected ({q.shape[0]},)")
    return QuantizedLinearFn.apply(x, scheme, q, scale, min, None if bias is None else bias)

