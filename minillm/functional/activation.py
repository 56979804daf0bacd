"""gelu (tanh and exact), relu, silu, the fused swiglu feed-forward, and dropout as autograd nodes."""
import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ._checks import as_input, check_float, check_ndim


class GELUFn(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return kernels.gelu_forward(x)

    @staticmethod
    def backward(ctx, dy):
        return kernels.gelu_backward(dy, *ctx.saved)


class GELUErfFn(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return kernels.gelu_erf_forward(x)

    @staticmethod
    def backward(ctx, dy):
        return kernels.gelu_erf_backward(dy, *ctx.saved)


class ReLUFn(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return kernels.relu_forward(x)

    @staticmethod
    def backward(ctx, dy):
        return kernels.relu_backward(dy, *ctx.saved)


class SiLUFn(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return kernels.silu_forward(x)

    @staticmethod
    def backward(ctx, dy):
        return kernels.silu_backward(dy, *ctx.saved)


class SwiGLUFn(Function):
    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        y, a, b, h = kernels.swiglu_forward(x, w_gate, w_up, w_down)
        ctx.save(x, w_gate, w_up, w_down, a, b, h)
        return y

    @staticmethod
    def backward(ctx, dy):
        return kernels.swiglu_backward(dy, *ctx.saved)


class DropoutFn(Function):
    @staticmethod
    def forward(ctx, x, p, rng):
        y, scale = kernels.dropout_forward(x, p, rng)
        ctx.save(scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        return kernels.dropout_backward(dy, *ctx.saved)


def gelu(x, approximate="tanh"):
    """GELU. approximate="tanh" (the default, GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
    approximate="none" (BERT's, exact): x Phi(x) = 0.5 x erfc(-x / sqrt(2)). Both have native kernels."""
    x = as_input(x)
    check_float("gelu", x=x)
    if approximate == "tanh":
        return GELUFn.apply(x)
    if approximate == "none":
        return GELUErfFn.apply(x)
    raise ValueError(f"gelu: approximate must be 'tanh' or 'none' (the exact erf form), got {approximate!r}")


def relu(x):
    """ReLU: max(x, 0) (T5's feed-forward)."""
    x = as_input(x)
    check_float("relu", x=x)
    return ReLUFn.apply(x)


def silu(x):
    """SiLU (swish): x * sigmoid(x)."""
    x = as_input(x)
    check_float("silu", x=x)
    return SiLUFn.apply(x)


def swiglu(x, w_gate, w_up, w_down):
    """(silu(x W_gate^T) * (x W_up^T)) W_down^T as one node.

    x: (..., C), w_gate, w_up: (F, C), w_down: (C, F) -> (..., C).
    """
    x, w_gate, w_up, w_down = (as_input(a) for a in (x, w_gate, w_up, w_down))
    check_float("swiglu", x=x, w_gate=w_gate, w_up=w_up, w_down=w_down)
    check_ndim("swiglu", "x", x, min_ndim=1)
    for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        check_ndim("swiglu", name, w, ndim=2)
    C = x.shape[-1]
    F = w_gate.shape[0]
    if w_gate.shape != (F, C) or w_up.shape != (F, C) or w_down.shape != (C, F):
        raise ValueError(f"swiglu: x has shape {x.shape}, w_gate {w_gate.shape}, w_up {w_up.shape}, "
                         f"w_down {w_down.shape}; expected w_gate and w_up (F, {C}) and w_down ({C}, F)")
    return SwiGLUFn.apply(x, w_gate, w_up, w_down)


def dropout(x, p, training=True, rng=None):
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    Identity when not training or p == 0. rng: a numpy Generator (default: a fresh unseeded one).
    """
    x = as_input(x)
    check_float("dropout", x=x)
    if not (isinstance(p, (int, float, np.floating)) and 0.0 <= p <= 1.0):
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return DropoutFn.apply(x, float(p), rng if rng is not None else np.random.default_rng())
