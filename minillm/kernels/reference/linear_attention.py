"""Linear attention's reference (Katharopoulos et al. 2020), on feature-mapped queries and keys.

    causal:      out_t = sum_{j <= t} (phi(q_t) . phi(k_j)) v_j / (sum_{j <= t} phi(q_t) . phi(k_j) + eps)
    non-causal:  the same sums over every j.
With A = phi(Q) phi(K)^T (masked below the diagonal when causal), num = A V, den = rowsum(A) + eps,
out = num / den. This reference builds the (T, T) matrix A; the native kernel (csrc/linear_attention.cpp)
runs the same sums as a recurrence with one D x E state, O(T) time and memory. The backward:
    dnum = dout / den,  dden = -rowsum(dout * out) / den,  dA = dnum V^T + dden 1^T (masked)
    dphi(q) = dA phi(K),  dphi(k) = dA^T phi(Q),  dv = A^T dnum.
"""
import numpy as np


def _scores(fq, fk, causal):
    a = fq @ np.swapaxes(fk, -1, -2)                                # (B, H, T, T)
    return np.tril(a) if causal else a


def linear_attention_forward(phi_q, phi_k, v, causal=True, eps=1e-6):
    """(out (B, H, T, E), den (B, H, T)) for phi_q, phi_k (B, H, T, D), v (B, H, T, E)."""
    a = _scores(phi_q, phi_k, causal)
    den = a.sum(axis=-1) + eps
    return (a @ v / den[..., None]).astype(v.dtype, copy=False), den.astype(v.dtype, copy=False)


def linear_attention_backward(dout, phi_q, phi_k, v, out, den, causal=True):
    """(dphi_q, dphi_k, dv) of linear_attention_forward."""
    a = _scores(phi_q, phi_k, causal)
    dnum = dout / den[..., None]
    dden = -np.sum(dout * out, axis=-1) / den
    da = dnum @ np.swapaxes(v, -1, -2) + dden[..., None]
    if causal:
        da = np.tril(da)
    return (da @ phi_k).astype(v.dtype, copy=False), (np.swapaxes(da, -1, -2) @ phi_q).astype(v.dtype, copy=False), \
        (np.swapaxes(a, -1, -2) @ dnum).astype(v.dtype, copy=False)
