"""Sparse and linear attention as autograd nodes: F.sparse_attention and F.linear_attention.

F.sparse_attention runs softmax attention over the keys an F.AttentionPattern lets each query see
(dilated, strided, block-sparse: functional/attention_patterns.py), on kernels whose work is the
visible pairs. F.linear_attention replaces softmax(q k^T) by phi(q) phi(k)^T with phi = elu + 1, so
attention becomes running sums: O(T) time and memory in training, a D x D state per head in decoding.
"""
import numpy as np

from .. import kernels
from ..autograd import Function
from ._checks import as_input, check_float, check_ndim
from .attention_patterns import AttentionPattern

FEATURE_MAPS = ("elu+1",)


class SparseAttentionFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, lists):
        out, lse = kernels.sparse_attention_forward(q, k, v, *lists)
        ctx.save(q, k, v, out, lse, lists)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, lists = ctx.saved
        return kernels.sparse_attention_backward(dout, q, k, v, out, lse, *lists)


def _check_qkv(fn, q, k, v):
    q, k, v = as_input(q), as_input(k), as_input(v)
    check_float(fn, q=q, k=k, v=v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_ndim(fn, name, a, ndim=4)
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{fn}: q {q.shape}, k {k.shape}, v {v.shape}: k and v must match, batch and head dim "
                         "equal q's, and q's heads be a multiple of k's")
    return q, k, v


def sparse_attention(q, k, v, pattern):
    """softmax(q k^T / sqrt(D)) v over the keys pattern lets each query see, one node.

    q: (B, H, T, D); k, v: (B, Hkv, S, D), H % Hkv == 0; query i at position S - T + i.
    pattern: an F.AttentionPattern (or its dict). Equals F.attention with the pattern's mask; the
    work (forward and backward) is the visible pairs times D. Returns (B, H, T, D).
    """
    q, k, v = _check_qkv("sparse_attention", q, k, v)
    pattern = AttentionPattern.from_dict(pattern, where="sparse_attention: pattern")
    if not isinstance(pattern, AttentionPattern):
        raise TypeError(f"sparse_attention: pattern must be an F.AttentionPattern, got {type(pattern).__name__}")
    return SparseAttentionFn.apply(q, k, v, pattern.indices(q.shape[2], k.shape[2]))


def elu_plus_one(x):
    """phi(x) = elu(x) + 1 = x + 1 (x > 0), exp(x) (x <= 0): positive, so the normaliser never vanishes."""
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def elu_plus_one_grad(x):
    """phi'(x) = 1 (x > 0), exp(x) (x <= 0)."""
    return np.where(x > 0, 1, np.exp(np.minimum(x, 0)))


def expand_kv(a, group):
    return np.repeat(a, group, axis=1) if group > 1 else a


class LinearAttentionFn(Function):
    """out = linear attention of phi(q), phi(k), v; the feature map's derivative is applied here and
    GQA's shared kv heads are repeated for the kernel and their gradients summed back."""

    @staticmethod
    def forward(ctx, q, k, v, causal, eps):
        group = q.shape[1] // k.shape[1]
        fq, fk = elu_plus_one(q), elu_plus_one(expand_kv(k, group))
        ve = expand_kv(v, group)
        out, den = kernels.linear_attention_forward(fq, fk, ve, causal, eps)
        ctx.save(q, k, fq, fk, ve, out, den, causal)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, fq, fk, ve, out, den, causal = ctx.saved
        dfq, dfk, dv = kernels.linear_attention_backward(dout, fq, fk, ve, out, den, causal)
        B, Hkv, T, D = k.shape
        group = q.shape[1] // Hkv
        dk = (dfk.reshape(B, Hkv, group, T, D).sum(axis=2)) * elu_plus_one_grad(k)
        dv = dv.reshape(B, Hkv, group, T, -1).sum(axis=2)
        return dfq * elu_plus_one_grad(q), dk.astype(k.dtype, copy=False), dv


def linear_attention(q, k, v, causal=True, eps=1e-6, feature_map="elu+1"):
    """Linear attention (Katharopoulos et al. 2020), one node:

        out_t = sum_{j <= t} (phi(q_t) . phi(k_j)) v_j / (sum_{j <= t} phi(q_t) . phi(k_j) + eps),  phi = elu + 1

    (all j when not causal). q: (B, H, T, D); k, v: (B, Hkv, T, D) (self-attention: the same T).
    No T x T matrix: the native kernel runs the sums with one D x D state per head. Returns (B, H, T, D).
    """
    q, k, v = _check_qkv("linear_attention", q, k, v)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"linear_attention: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"linear_attention: q has {q.shape[2]} positions and k {k.shape[2]}; they must be the "
                         "same (for decoding, use nn.LinearAttentionState)")
    if not eps >= 0:
        raise ValueError(f"linear_attention: eps must be >= 0, got {eps}")
    return LinearAttentionFn.apply(q, k, v, bool(causal), float(eps))
