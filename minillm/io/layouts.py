"""How other tools lay out the same weights: the RoPE row permutation of GGUF files, GPT-2's Conv1D.

RoPE. minillm (like Hugging Face Llama) rotates pairs (x_i, x_{i+D/2}) of each head ("rotate
half"); GGML rotates adjacent pairs (x_{2i}, x_{2i+1}) ("interleaved"), both by the angle
p * theta^(-2i/D). llama.cpp's converter therefore reorders the rows of the q and k projections
inside every head so that interleaved RoPE on its rows computes what rotate-half RoPE computes on
the Hugging Face rows:

    GGUF row  h*D + 2*i + s   =   HF row  h*D + s*D/2 + i       (head h, pair i < D/2, s in {0, 1})

permute_rope_rows goes from HF (= minillm) order to GGUF order, unpermute_rope_rows back. Rows
are independent, so the same permutation applies to a quantized tensor's quants, scales and mins.
q uses the query head count, k the key/value head count. tests/test_io_ggml.py checks that
interleaved RoPE on the permuted weights equals minillm's F.rope on the original ones.

Conv1D. GPT-2's Hugging Face checkpoints store c_attn, c_proj, c_fc as (in, out), the transpose
of a Linear's (out, in) weight; GGUF stores them (out, in), like minillm.
"""
import numpy as np


def _check(w, n_heads, what):
    if w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise ValueError(f"{what}: {w.shape[0]} rows are not {n_heads} heads of an even head dim")
    return w.shape[0] // n_heads


def permute_rope_rows(w, n_heads):
    """HF / minillm (rotate-half) row order -> GGUF (interleaved) row order; w: (n_heads * D, ...)."""
    D = _check(w, n_heads, "permute_rope_rows")
    return np.ascontiguousarray(w.reshape(n_heads, 2, D // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def unpermute_rope_rows(w, n_heads):
    """GGUF (interleaved) row order -> HF / minillm (rotate-half) row order; the inverse of the above."""
    D = _check(w, n_heads, "unpermute_rope_rows")
    return np.ascontiguousarray(w.reshape(n_heads, D // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def rope_interleaved(x, positions, theta):
    """GGML's RoPE, for checking the permutation: x (..., T, D), pair (x_{2i}, x_{2i+1}) at position
    p turned by p * theta^(-2i/D):  (a, b) -> (a cos - b sin, a sin + b cos)."""
    D = x.shape[-1]
    angles = np.asarray(positions, np.float64)[:, None] * theta ** (-np.arange(0, D, 2) / D)   # (T, D/2)
    cos, sin = np.cos(angles), np.sin(angles)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty(x.shape, dtype=np.result_type(x, np.float64))
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out
