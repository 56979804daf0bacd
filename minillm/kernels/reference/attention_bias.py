"""Attention with an additive score bias and a free scale, and T5's relative position bias.

    out = softmax(scale * q k^T + bias + mask) v           bias: (H, T, S) or (B, H, T, S)

T5 adds a learned bias per head and relative distance to every score and does not divide by
sqrt(D) (scale = 1: its init absorbs the factor). The bias takes a gradient: dbias = dS summed over
the axes it was broadcast along (dS, the gradient of the scores, is the same as in plain attention).
These run in NumPy on both backends (the (T, S) scores are materialised), which is fine for the
small T5-style models trained here; the C++ attention kernel has no bias input.

T5's bucket of a relative position r = key - query (Raffel et al. 2020, transformers'
T5Attention._relative_position_bucket), with N buckets and a maximum distance M:
    bidirectional: N /= 2, and keys after the query (r > 0) use buckets N..2N-1
    n = |r| (bidirectional) or max(-r, 0) (causal: keys after the query all land in bucket 0)
    n <  N/2:  bucket n                                    (one bucket per distance, up close)
    n >= N/2:  bucket N/2 + floor(log(n / (N/2)) / log(M / (N/2)) * (N - N/2)), at most N - 1
i.e. exact near the query and logarithmically coarser up to M, beyond which all share the last one.
The logarithm is taken in float32, as transformers does, so a distance on a bucket's edge lands in
the same bucket.
"""
import math

import numpy as np

from .attention import _expand_kv, visible_keys


def relative_position_buckets(query_positions, key_positions, bidirectional, num_buckets, max_distance):
    """Bucket ids (T, S) int64 of r = key - query for every query and key position (see above)."""
    r = np.asarray(key_positions, np.int64)[None, :] - np.asarray(query_positions, np.int64)[:, None]
    buckets = np.zeros(r.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        buckets += (r > 0) * num_buckets
        n = np.abs(r)
    else:
        n = np.maximum(-r, 0)
    exact = num_buckets // 2
    # in float32, as transformers computes it, so positions on a bucket edge land where they do there
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(exact)
    scaled = np.log(ratio) / np.float32(math.log(max_distance / exact)) * np.float32(num_buckets - exact)
    far = exact + scaled.astype(np.int64)                            # truncation toward zero, as .to(long)
    far = np.minimum(far, num_buckets - 1)
    return buckets + np.where(n < exact, n, far)


def relative_position_bias_forward(table, buckets):
    """bias[h, i, j] = table[buckets[i, j], h].   table: (num_buckets, H), buckets: (T, S) -> (H, T, S)."""
    return np.ascontiguousarray(np.moveaxis(table[buckets], -1, 0))


def relative_position_bias_backward(dbias, buckets, num_buckets):
    """dtable[b, h] = sum of dbias[h, i, j] over the (i, j) with buckets[i, j] = b (a scatter-add)."""
    H = dbias.shape[0]
    dtable = np.zeros((num_buckets, H), dtype=dbias.dtype)
    np.add.at(dtable, buckets.reshape(-1), np.moveaxis(dbias, 0, -1).reshape(-1, H))
    return dtable


def _scores(q, k, bias, scale, causal, key_padding_mask):
    """s = scale * q k^T + bias, -inf where a key is not visible.  -> (B, H, T, S)."""
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    s = (q @ np.swapaxes(_expand_kv(k, H // k.shape[1]), -1, -2)) * scale
    if bias is not None:
        s = s + bias
    return np.where(visible_keys(T, S, causal, None, key_padding_mask), s, -np.inf)


def attention_bias_forward(q, k, v, bias=None, scale=None, causal=False, key_padding_mask=None):
    """(out, lse) of softmax(scale * q k^T + bias + mask) v; scale None is 1 / sqrt(D).

    q: (B, H, T, D); k, v: (B, Hkv, S, D); query i at position S - T + i for the causal mask.
    A query that sees no key gets out = 0 and lse = +inf, as in attention_forward.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, bias, scale, causal, key_padding_mask)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    total = np.sum(e, axis=-1, keepdims=True)
    p = e / np.where(total > 0, total, 1.0)
    out = p @ _expand_kv(v, q.shape[1] // v.shape[1])
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, m + np.log(total), np.inf)[..., 0]
    return out.astype(q.dtype, copy=False), lse.astype(q.dtype, copy=False)


def attention_bias_backward(dout, q, k, v, out, lse, bias=None, scale=None, causal=False, key_padding_mask=None,
                            bias_shape=None):
    """(dq, dk, dv, dbias) with P = exp(s - lse):
        dV = P^T dO,  dS = P * (dO V^T - rowsum(dO * O)),  dQ = scale dS K,  dK = scale dS^T Q
        dbias = dS summed down to bias_shape ((H, T, S): over the batch)
    dbias is None when there is no bias.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    p = np.exp(_scores(q, k, bias, scale, causal, key_padding_mask) - lse[..., None])   # (B, H, T, S)
    dv = np.swapaxes(p, -1, -2) @ dout
    ds = p * (dout @ np.swapaxes(_expand_kv(v, group), -1, -2) - np.sum(dout * out, axis=-1, keepdims=True))
    dq = ds @ _expand_kv(k, group) * scale
    dk = np.swapaxes(ds, -1, -2) @ q * scale
    dk = dk.reshape(B, Hkv, group, S, D).sum(axis=2)
    dv = dv.reshape(B, Hkv, group, S, D).sum(axis=2)
    dbias = None
    if bias is not None:
        shape = tuple(bias_shape if bias_shape is not None else bias.shape)
        dbias = ds.sum(axis=0) if len(shape) == 3 else ds
        dbias = dbias.astype(q.dtype, copy=False)
    cast = lambda a: a.astype(q.dtype, copy=False)   # noqa: E731
    return cast(dq), cast(dk), cast(dv), dbias
