"""Flash-style attention in C++ (csrc/attention.cpp): tiled, online softmax, no (T, S) matrix."""
import numpy as np

from . import _C


def _options(q, causal, window, alibi_slopes, key_padding_mask):
    """The binding's keyword arguments: window 0 = none, slopes in q's dtype, a contiguous bool mask."""
    if alibi_slopes is not None:
        alibi_slopes = np.ascontiguousarray(alibi_slopes, dtype=q.dtype)
    if key_padding_mask is not None:
        key_padding_mask = np.ascontiguousarray(key_padding_mask)
    return dict(causal=bool(causal), window=0 if window is None else int(window), alibi_slopes=alibi_slopes,
                key_padding_mask=key_padding_mask)


def attention_forward(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """out = softmax(q k^T / sqrt(D) + bias + mask) v and lse per row (see reference.attention_forward)."""
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    return _C.attention_forward(q=q, k=k, v=v, **_options(q, causal, window, alibi_slopes, key_padding_mask))


def attention_backward(dout, q, k, v, out, lse, causal=True, window=None, alibi_slopes=None,
                       key_padding_mask=None):
    """(dq, dk, dv) from scores recomputed tile by tile (see reference.attention_backward)."""
    q, k, v, out, lse = (np.ascontiguousarray(a) for a in (q, k, v, out, lse))
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    return _C.attention_backward(dout=dout, q=q, k=k, v=v, out=out, lse=lse,
                                 **_options(q, causal, window, alibi_slopes, key_padding_mask))

