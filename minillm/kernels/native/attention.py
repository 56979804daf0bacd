"""Flash-style attention in C++ (csrc/attention.cpp): tiled, online softmax, no (T, S) matrix."""
import numpy as np

from . import _C


def _options(q, window, alibi_slopes, key_padding_mask):
    """What the binding takes: window 0 = none, slopes in q's dtype, a contiguous bool mask."""
    window = 0 if window is None else int(window)
    if alibi_slopes is not None:
        alibi_slopes = np.ascontiguousarray(alibi_slopes, dtype=q.dtype)
    if key_padding_mask is not None:
        key_padding_mask = np.ascontiguousarray(key_padding_mask)
    return window, alibi_slopes, key_padding_mask


def attention_forward(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """out = softmax(q k^T / sqrt(D) + bias + mask) v and lse per row (see reference.attention_forward)."""
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    return _C.attention_forward(q, k, v, bool(causal), *_options(q, window, alibi_slopes, key_padding_mask))


def attention_backward(dout, q, k, v, out, lse, causal=True, window=None, alibi_slopes=None,
                       key_padding_mask=None):
    """(dq, dk, dv) from scores recomputed tile by tile (see reference.attention_backward)."""
    q, k, v, out, lse = (np.ascontiguousarray(a) for a in (q, k, v, out, lse))
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    return _C.attention_backward(dout, q, k, v, out, lse, bool(causal),
                                 *_options(q, window, alibi_slopes, key_padding_mask))


KERNELS = ["attention_forward", "attention_backward"]
