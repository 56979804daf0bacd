"""linear and embedding as autograd nodes."""
import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ._checks import as_input, check_float, check_int_ids, check_last_dim, check_ndim


class LinearFn(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save(x, w, b is not None)
        return kernels.linear_forward(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w, has_bias = ctx.saved
        return kernels.linear_backward(dy, x, w, has_bias)


def linear(x, w, b=None):
    """y = x W^T + b.   x: (..., in), w: (out, in), b: (out,) or None -> (..., out)."""
    x, w = as_input(x), as_input(w)
    b = None if b is None else as_input(b)
    check_float("linear", x=x, w=w, b=b)
    check_ndim("linear", "x", x, min_ndim=1)
    check_ndim("linear", "w", w, ndim=2)
    check_last_dim("linear", "x", x, w.shape[1], "w's in_features, w.shape[1]")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: b has shape {b.shape} but w has shape {w.shape}; b must be ({w.shape[0]},)")
    return LinearFn.apply(x, w, b)


class EmbeddingFn(Function):
    @staticmethod
    def forward(ctx, ids, weight):
        ctx.save(ids, weight.shape[0])
        return kernels.embedding_forward(ids, weight)

    @staticmethod
    def backward(ctx, dy):
        ids, num_embeddings = ctx.saved
        return None, kernels.embedding_backward(dy, ids, num_embeddings)


def embedding(ids, weight):
    """y[..., :] = weight[ids[...], :].   ids: ints of any shape in [0, V), weight: (V, C) -> (*ids.shape, C)."""
    ids = ids.data if isinstance(ids, Tensor) else np.asarray(ids)   # ids never take a gradient
    weight = as_input(weight)
    check_float("embedding", weight=weight)
    check_ndim("embedding", "weight", weight, ndim=2)
    check_int_ids("embedding", "ids", ids, weight.shape[0])
    return EmbeddingFn.apply(ids, weight)
