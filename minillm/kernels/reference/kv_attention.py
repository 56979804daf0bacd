"""Attention of new queries over a pre-allocated KV cache (generation's decode step)."""
from .attention import attention_forward


def kv_attention_forward(q, k_cache, v_cache, length, causal=True, window=None, alibi_slopes=None,
                         key_padding_mask=None):
    """out of attention_forward(q, k_cache[:, :, :length], v_cache[:, :, :length], ...).

    q: (B, H, T, D); k_cache, v_cache: (B, Hkv, L, D) whose first `length` >= T positions are
    filled; the T queries are the last T of them. Returns out (B, H, T, D) (no lse: nothing runs
    backward through a cache). The native kernel reads the cache in place instead of slicing it
    into contiguous copies.
    """
    return attention_forward(q, k_cache[:, :, :length], v_cache[:, :, :length], causal, window, alibi_slopes,
                             key_padding_mask)[0]
