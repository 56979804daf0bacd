"""rms_norm and layer_norm as autograd nodes."""
from .. import kernels
from ..autograd import Function
from ._checks import as_input, check_float, check_ndim


class RMSNormFn(Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, inv_rms = kernels.rms_norm_forward(x, weight, eps)
        ctx.save(x, weight, inv_rms)
        return y

    @staticmethod
    def backward(ctx, dy):
        return kernels.rms_norm_backward(dy, *ctx.saved)


class LayerNormFn(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, x_hat, inv_std = kernels.layer_norm_forward(x, weight, bias, eps)
        ctx.save(x_hat, weight, inv_std)
        return y

    @staticmethod
    def backward(ctx, dy):
        return kernels.layer_norm_backward(dy, *ctx.saved)


def _check_norm(fn, x, eps, **params):
    check_float(fn, x=x, **params)
    check_ndim(fn, "x", x, min_ndim=1)
    for name, p in params.items():
        if p.shape != (x.shape[-1],):
            raise ValueError(f"{fn}: {name} has shape {p.shape} but x has shape {x.shape}; "
                             f"{name} must be ({x.shape[-1]},)")
    if not eps > 0:
        raise ValueError(f"{fn}: eps must be positive, got {eps}")


def rms_norm(x, weight, eps=1e-5):
    """y = x / sqrt(mean(x^2, axis=-1) + eps) * weight.   x: (..., C), weight: (C,)."""
    x, weight = as_input(x), as_input(weight)
    _check_norm("rms_norm", x, eps, weight=weight)
    return RMSNormFn.apply(x, weight, eps)


def layer_norm(x, weight, bias, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.   x: (..., C); weight, bias: (C,)."""
    x, weight, bias = as_input(x), as_input(weight), as_input(bias)
    _check_norm("layer_norm", x, eps, weight=weight, bias=bias)
    return LayerNormFn.apply(x, weight, bias, eps)
