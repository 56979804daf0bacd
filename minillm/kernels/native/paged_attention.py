"""Attention through the block tables of a paged KV cache, in C++ (csrc/paged_attention.cpp)."""
import numpy as np

from . import _C


def paged_attention_forward(q, k_pages, v_pages, block_tables, seq_of, positions, window=None, alibi_slopes=None):
    """out of causal attention of packed tokens over a paged cache (see reference.paged_attention_forward)."""
    q = np.ascontiguousarray(q)
    if alibi_slopes is not None:
        alibi_slopes = np.ascontiguousarray(alibi_slopes, dtype=q.dtype)
    return _C.paged_attention_forward(
        q=q, k_pages=k_pages, v_pages=v_pages, block_tables=np.ascontiguousarray(block_tables, dtype=np.int64),
        seq_of=np.ascontiguousarray(seq_of, dtype=np.int64), positions=np.ascontiguousarray(positions, dtype=np.int64),
        window=0 if window is None else int(window), alibi_slopes=alibi_slopes)
