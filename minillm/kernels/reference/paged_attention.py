"""Attention of a step's packed new tokens over a paged KV cache (the serving engine's step)."""
import numpy as np

from .attention import attention_forward


def paged_attention_forward(q, k_pages, v_pages, block_tables, seq_of, positions, window=None, alibi_slopes=None):
    """out_i = attention of token i over the keys 0..positions[i] of its sequence seq_of[i].

    q: (N, H, D), the step's new tokens packed in one row; k_pages, v_pages: (P, Hkv, bs, D), a pool
    of blocks of bs positions; block_tables: (S, M) int64, the blocks of each sequence in order, so
    key j of sequence s is k_pages[block_tables[s, j // bs], :, j % bs]. Causal, with an optional
    window and ALiBi slopes (H,). Returns out (N, H, D). Each token's keys are gathered into a
    contiguous (1, Hkv, p + 1, D) copy and handed to attention_forward as its last query.
    """
    N, H, D = q.shape
    bs = k_pages.shape[2]
    out = np.empty_like(q)
    for i in range(N):
        p = int(positions[i])
        pages = block_tables[seq_of[i], : p // bs + 1]                          # the blocks it reads
        k = k_pages[pages].transpose(1, 0, 2, 3).reshape(1, -1, len(pages) * bs, D)[:, :, : p + 1]
        v = v_pages[pages].transpose(1, 0, 2, 3).reshape(1, -1, len(pages) * bs, D)[:, :, : p + 1]
        y, _ = attention_forward(q[i][None, :, None], k, v, True, window, alibi_slopes)   # (1, H, 1, D)
        out[i] = y[0, :, 0]
    return out
