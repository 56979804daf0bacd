"""Sparse attention's reference: the dense softmax with the mask the pattern's key lists make.

The pattern is one list of keys per query, in CSR form (indptr (T + 1,), indices), shared by the batch
and the heads (minillm/functional/attention_patterns.py makes them). This reference builds the (T, S)
mask from the lists and runs the dense math, so it costs T x S; the native kernel
(csrc/sparse_attention.cpp) walks the lists and costs the visible pairs. Both follow the non-finite
rules of reference/attention.py.
"""
import math

import numpy as np

from .attention import _expand_kv


def mask_from_indices(indptr, indices, T, S):
    """bool (T, S): True where query i's list holds key j."""
    mask = np.zeros((T, S), dtype=bool)
    mask[np.repeat(np.arange(T), np.diff(indptr)), indices] = True
    return mask


def _masked_scores(q, k, mask):
    with np.errstate(invalid="ignore", over="ignore"):
        s = q @ np.swapaxes(_expand_kv(k, q.shape[1] // k.shape[1]), -1, -2) * (1.0 / math.sqrt(q.shape[-1]))
    return np.where(mask, s, -np.inf)


def sparse_attention_forward(q, k, v, indptr, indices):
    """out_i = sum_{j in keys(i)} softmax_j(q_i . k_j / sqrt(D)) v_j, and lse (B, H, T).

    q (B, H, T, D); k, v (B, Hkv, S, D). A query with no key: out 0, lse +inf."""
    T, S = q.shape[2], k.shape[2]
    mask = mask_from_indices(indptr, indices, T, S)
    s = _masked_scores(q, k, mask)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, 0.0, m)
    with np.errstate(invalid="ignore"):
        e = np.exp(s - m)
        total = np.sum(e, axis=-1, keepdims=True)
        p = e / np.where(total == 0, 1.0, total)
        out = p @ _expand_kv(v, q.shape[1] // v.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(total == 0, np.inf, m + np.log(total))[..., 0]
    return out.astype(q.dtype, copy=False), lse.astype(q.dtype, copy=False)


def sparse_attention_backward(dout, q, k, v, out, lse, indptr, indices):
    """(dq, dk, dv) as reference.attention_backward, with P and dS exactly 0 off the lists."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    mask = mask_from_indices(indptr, indices, T, S)
    with np.errstate(invalid="ignore"):
        p = np.where(mask, np.exp(_masked_scores(q, k, mask) - lse[..., None]), 0)
        dv = np.swapaxes(p, -1, -2) @ dout
        dp = dout @ np.swapaxes(_expand_kv(v, group), -1, -2)
        ds = np.where(mask, p * (dp - np.sum(dout * out, axis=-1, keepdims=True)), 0)
        dq = ds @ _expand_kv(k, group) / math.sqrt(D)
        dk = np.swapaxes(ds, -1, -2) @ q / math.sqrt(D)
    dk = dk.reshape(B, Hkv, group, S, D).sum(axis=2)
    dv = dv.reshape(B, Hkv, group, S, D).sum(axis=2)
    return tuple(a.astype(q.dtype, copy=False) for a in (dq, dk, dv))
