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


class FusedLinearFn(Function):
    """y = x W^T + b with W = [W_1; ...; W_n] and b = [b_1; ...; b_n] stacked, one node whose
    backward splits dW (and db) back into one gradient per part: dW_i = dy_i^T x, the rows of dW.

    forward(ctx, x, w, b, sizes, *parts): w, b are the stacked arrays the matmuls use; parts are
    the weights and then the biases (the tensors whose gradients the tape routes), each of sizes[i] rows.
    """

    @staticmethod
    def forward(ctx, x, w, b, sizes, *parts):
        ctx.save(x, w, b is not None, sizes)
        return kernels.linear_forward(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w, has_bias, sizes = ctx.saved
        dx, dw, db = kernels.linear_backward(dy, x, w, has_bias)
        bounds = []
        start = 0
        for n in sizes:
            bounds.append((start, start + n))
            start += n
        parts = [dw[a:b] for a, b in bounds] + ([db[a:b] for a, b in bounds] if has_bias else [])
        return (dx, None, None, None, *parts)


def fused_linear(x, weights, biases=None, stacked=None):
    """[x W_1^T + b_1, ..., x W_n^T + b_n] concatenated on the last axis, as one matmul and one node.

    x: (..., in); weights: n tensors (out_i, in); biases: n tensors (out_i,) or None.
    -> (..., sum of out_i). stacked: (W, b), the arrays np.concatenate(weights) and
    np.concatenate(biases) (or None) already are, e.g. kept by nn.FusedRows; without it they are
    concatenated here (a copy per call).
    """
    x = as_input(x)
    weights = [as_input(w) for w in weights]
    biases = None if biases is None else [as_input(b) for b in biases]
    check_float("fused_linear", x=x, **{f"weights[{i}]": w for i, w in enumerate(weights)},
                **{f"biases[{i}]": b for i, b in enumerate(biases or [])})
    check_ndim("fused_linear", "x", x, min_ndim=1)
    for i, w in enumerate(weights):
        check_ndim("fused_linear", f"weights[{i}]", w, ndim=2)
        check_last_dim("fused_linear", "x", x, w.shape[1], f"weights[{i}]'s in_features")
    sizes = tuple(w.shape[0] for w in weights)
    if biases is not None and [b.shape for b in biases] != [(n,) for n in sizes]:
        raise ValueError(f"fused_linear: biases have shapes {[b.shape for b in biases]}; they must be "
                         f"{[(n,) for n in sizes]}, one per weight")
    if stacked is None:
        stacked = (np.concatenate([_array(w) for w in weights]),
                   None if biases is None else np.concatenate([_array(b) for b in biases]))
    w, b = stacked
    if w.shape != (sum(sizes), x.shape[-1]) or (b is None) != (biases is None):
        raise ValueError(f"fused_linear: stacked weights of shape {w.shape} do not stack the weights {sizes}")
    return FusedLinearFn.apply(x, w, b, sizes, *weights, *(biases or []))


def _array(a):
    return a.data if isinstance(a, Tensor) else a


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
