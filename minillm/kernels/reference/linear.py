"""Linear layer and embedding lookup."""
import numpy as np


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """C = op(a) op(b), op(x) = x.T when its flag is set; with out: written into out, or added
    to it when accumulate (C += op(a) op(b), how weight gradients are summed). 2-D arrays."""
    c = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate=True needs out= to add into")
        return c
    if accumulate:
        out += c
    else:
        out[...] = c
    return out


def linear_forward(x, w, b=None):
    """y = x W^T + b.   x: (..., in), w: (out, in), b: (out,) or None -> y: (..., out)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, has_bias=True):
    """From y = x W^T + b, with rows flattened to x2: (N, in), dy2: (N, out):
        dx = dy W,   dW = dy2^T x2,   db = sum over rows of dy.
    """
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dx = dy @ w
    dw = dy2.T @ x2
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dw, db


def embedding_forward(ids, weight):
    """y[..., :] = weight[ids[...], :].   ids: any shape of ints in [0, V), weight: (V, C)."""
    return weight[ids]


def embedding_backward(dy, ids, num_embeddings):
    """dweight[v] = sum of dy over the positions where ids == v (rows used twice get both)."""
    dweight = np.zeros((num_embeddings, dy.shape[-1]), dtype=dy.dtype)
    np.add.at(dweight, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
    return dweight
