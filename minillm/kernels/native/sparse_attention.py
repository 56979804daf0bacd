"""Sparse attention in C++ (csrc/sparse_attention.cpp): the work is the visible pairs, not T x S."""
import numpy as np

from . import _C


def _lists(indptr, indices):
    return np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(indices, dtype=np.int64)


def sparse_attention_forward(q, k, v, indptr, indices):
    """(out, lse) over each query's list of keys (see reference.sparse_attention_forward)."""
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    indptr, indices = _lists(indptr, indices)
    return _C.sparse_attention_forward(q=q, k=k, v=v, indptr=indptr, indices=indices)


def sparse_attention_backward(dout, q, k, v, out, lse, indptr, indices):
    """(dq, dk, dv) over the visible pairs (see reference.sparse_attention_backward)."""
    q, k, v, out, lse = (np.ascontiguousarray(a) for a in (q, k, v, out, lse))
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    indptr, indices = _lists(indptr, indices)
    return _C.sparse_attention_backward(dout=dout, q=q, k=k, v=v, out=out, lse=lse, indptr=indptr, indices=indices)
