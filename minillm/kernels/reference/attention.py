"""Scaled dot-product attention: MHA/GQA/MQA, causal or bidirectional, sliding window, ALiBi,
key padding. The reference materialises the (T, S) score matrix; it keeps only the per-row
log-sum-exp for the backward, exactly as the tiled (flash-style) kernel does.

Positions: the T queries are the *last* T of the S keys' positions, so query i sits at
position S - T + i (with T = S that is i; with a KV cache, the new tokens come last).

Non-finite inputs are never hidden: a NaN or +inf score among the keys a query sees (from NaN or
inf in its q or in a visible key's k) makes that query's output row NaN and its lse NaN; -inf scores
count as hidden. Keys a query does not see never reach its output or the gradients through it, so
a NaN row's gradients reach exactly the keys it sees. The native kernel follows the same rules.
"""
import math

import numpy as np


def visible_keys(T, S, causal, window, key_padding_mask):
    """Which keys each query may attend to: bool (B or 1, 1, T, S).

    causal: key j <= query position p.  window w: p - j < w (causal) or |p - j| < w.
    key_padding_mask: (B, S), True = a real key, False = padding.
    """
    p = np.arange(S - T, S)[:, None]          # (T, 1) query positions
    j = np.arange(S)[None, :]                 # (1, S) key positions
    keep = np.ones((T, S), dtype=bool)
    if causal:
        keep &= j <= p
    if window is not None:
        keep &= np.abs(p - j) < window
    keep = keep[None, None]                   # (1, 1, T, S)
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    return keep


def alibi_bias(slopes, T, S, causal):
    """ALiBi: score(i, j) += -slope_h * distance, distance = p - j (causal) or |p - j|.  -> (H, T, S)."""
    p = np.arange(S - T, S)[:, None]
    j = np.arange(S)[None, :]
    distance = (p - j) if causal else np.abs(p - j)
    return -slopes[:, None, None] * distance[None]


def _expand_kv(a, group):
    """(B, Hkv, S, D) -> (B, Hkv * group, S, D): query head h reads kv head h // group."""
    return np.repeat(a, group, axis=1) if group > 1 else a


def _scores(q, k, causal, window, alibi_slopes, key_padding_mask):
    """s = q k^T / sqrt(D) (+ ALiBi), -inf where a key is not visible.  -> (B, H, T, S)."""
    B, H, T, D = q.shape
    S = k.shape[2]
    with np.errstate(invalid="ignore", over="ignore"):                # NaN and inf inputs: NaN and inf scores
        s = q @ np.swapaxes(_expand_kv(k, H // k.shape[1]), -1, -2) * (1.0 / math.sqrt(D))
    if alibi_slopes is not None:
        s = s + alibi_bias(alibi_slopes.astype(q.dtype), T, S, causal)
    return np.where(visible_keys(T, S, causal, window, key_padding_mask), s, -np.inf)


def attention_forward(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """out = softmax(q k^T / sqrt(D) + bias + mask) v.

    q: (B, H, T, D); k, v: (B, Hkv, S, D), H % Hkv == 0. Returns out (B, H, T, D) and
    lse (B, H, T) = log sum_j exp(s_ij), the one number per row the backward needs.
    A query that sees no key at all gets out = 0 and lse = +inf (so exp(s - lse) = 0).
    """
    s = _scores(q, k, causal, window, alibi_slopes, key_padding_mask)          # (B, H, T, S)
    m = np.max(s, axis=-1, keepdims=True)                                      # NaN if a score is NaN
    m = np.where(m == -np.inf, 0.0, m)                                         # a row that sees nothing
    with np.errstate(invalid="ignore"):                                        # +inf - +inf: NaN, on purpose
        e = np.exp(s - m)
        total = np.sum(e, axis=-1, keepdims=True)
        p = e / np.where(total == 0, 1.0, total)
        out = p @ _expand_kv(v, q.shape[1] // v.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(total == 0, np.inf, m + np.log(total))[..., 0]
    return out.astype(q.dtype, copy=False), lse.astype(q.dtype, copy=False)


def attention_backward(dout, q, k, v, out, lse, causal=True, window=None, alibi_slopes=None,
                       key_padding_mask=None):
    """With P = exp(s - lse) recomputed from the saved log-sum-exp:
        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O))
        dQ = dS K / sqrt(D),   dK = dS^T Q / sqrt(D)
    (rowsum(dO * O) = rowsum(dP * P), the softmax backward's inner product). For GQA the
    gradients of the query heads that share a kv head are summed into it. P and dS are exactly 0
    at the keys a query does not see (even where its lse or rowsum is NaN).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    seen = visible_keys(T, S, causal, window, key_padding_mask)                  # (B or 1, 1, T, S)
    with np.errstate(invalid="ignore"):                                          # NaN rows stay NaN
        p = np.where(seen, np.exp(_scores(q, k, causal, window, alibi_slopes, key_padding_mask) - lse[..., None]), 0)
        dv = np.swapaxes(p, -1, -2) @ dout                                       # (B, H, S, D)
        dp = dout @ np.swapaxes(_expand_kv(v, group), -1, -2)                     # (B, H, T, S)
        ds = np.where(seen, p * (dp - np.sum(dout * out, axis=-1, keepdims=True)), 0)
    scale = 1.0 / math.sqrt(D)
    with np.errstate(invalid="ignore"):
        dq = ds @ _expand_kv(k, group) * scale
        dk = np.swapaxes(ds, -1, -2) @ q * scale                                 # (B, H, S, D)
    dk = dk.reshape(B, Hkv, group, S, D).sum(axis=2)
    dv = dv.reshape(B, Hkv, group, S, D).sum(axis=2)
    return dq.astype(q.dtype, copy=False), dk.astype(q.dtype, copy=False), dv.astype(q.dtype, copy=False)
