"""Attention over a KV cache read in place, in C++ (csrc/kv_attention.cpp)."""
import numpy as np

from . import _C


def kv_attention_forward(q, k_cache, v_cache, length, causal=True, window=None, alibi_slopes=None,
                         key_padding_mask=None):
    """out of attention over the first `length` cached positions (see reference.kv_attention_forward)."""
    q = np.ascontiguousarray(q)
    if alibi_slopes is not None:
        alibi_slopes = np.ascontiguousarray(alibi_slopes, dtype=q.dtype)
    if key_padding_mask is not None:
        key_padding_mask = np.ascontiguousarray(key_padding_mask)
    return _C.kv_attention_forward(q=q, k_cache=k_cache, v_cache=v_cache, length=int(length), causal=bool(causal),
                                   window=0 if window is None else int(window), alibi_slopes=alibi_slopes,
                                   key_padding_mask=key_padding_mask)
