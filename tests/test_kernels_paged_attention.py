"""Attention through the block tables of a paged KV cache (csrc/paged_attention.cpp) equals attention
over the same keys held contiguously (kv_attention_forward), for blocks scattered in any order over
a pool, any block size, MHA/GQA/MQA, windows, ALiBi, float32 and float64, every SIMD path; the NumPy
reference equals it too; the binding rejects bad tables and arrays with a ValueError."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.kernels.reference.positions import alibi_slopes
from minillm.testing.strategies import arrays_like, attention_configs

from kernel_parity import simd_path, tolerance  # noqa: F401 (simd_path is a fixture)

FAMILY = "attention"     # it runs attention's tile helpers
pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


def scatter_into_blocks(cache, bs, rng, extra_blocks):
    """(B, Hkv, S, D) contiguous caches -> pages (P, Hkv, bs, D), block tables (B, M): each row's
    blocks at random places of a pool with `extra_blocks` unused (garbage-filled) blocks."""
    B, Hkv, S, D = cache.shape
    M = -(-S // bs)
    P = B * M + extra_blocks
    pages = rng.standard_normal((P, Hkv, bs, D)).astype(cache.dtype) * 100     # unused slots: garbage
    tables = rng.permutation(P)[:B * M].reshape(B, M).astype(np.int64)
    for b in range(B):
        for j in range(S):
            pages[tables[b, j // bs], :, j % bs] = cache[b, :, j]
    return pages, tables


@st.composite
def paged_inputs(draw):
    cfg = draw(attention_configs(max_len=12))
    B, H, Hkv, T, S, D = (cfg[n] for n in ("B", "H", "Hkv", "T", "S", "D"))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-2, 1.0, 5.0]))
    q = draw(arrays_like((B, H, T, D), dtype, scale))
    k = draw(arrays_like((B, Hkv, S, D), dtype, scale))
    v = draw(arrays_like((B, Hkv, S, D), dtype))
    bs = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    options = dict(window=draw(st.one_of(st.none(), st.integers(1, S + 1))),
                   alibi_slopes=alibi_slopes(H).astype(dtype) if draw(st.booleans()) else None)
    return q, k, v, bs, rng, draw(st.integers(0, 3)), options


@given(inputs=paged_inputs())
def test_paged_attention_equals_attention_over_a_contiguous_cache(inputs, simd_path):
    q, k, v, bs, rng, extra, options = inputs
    B, H, T, D = q.shape
    S = k.shape[2]
    k_pages, tables = scatter_into_blocks(k, bs, rng, extra)
    v_pages = np.full_like(k_pages, 7.0)                                        # the values, at the same places
    for b in range(B):
        for j in range(S):
            v_pages[tables[b, j // bs], :, j % bs] = v[b, :, j]
    packed_q = np.ascontiguousarray(q.transpose(0, 2, 1, 3).reshape(B * T, H, D))    # tokens of row b side by side
    seq_of = np.repeat(np.arange(B), T)
    positions = np.tile(np.arange(S - T, S), B)
    got = native.paged_attention.paged_attention_forward(packed_q, k_pages, v_pages, tables, seq_of, positions,
                                                         **options)
    ref = reference.paged_attention_forward(packed_q, k_pages, v_pages, tables, seq_of, positions, **options)
    want = native.kv_attention.kv_attention_forward(q, k, v, S, causal=True, **options)   # (B, H, T, D)
    want = want.transpose(0, 2, 1, 3).reshape(B * T, H, D)
    assert got.dtype == q.dtype and got.shape == packed_q.shape
    rtol = tolerance(q.dtype, S * D) * 50
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (1 + np.abs(want).max()))
    np.testing.assert_allclose(ref, want, rtol=rtol, atol=rtol * (1 + np.abs(want).max()))


def test_tokens_of_different_sequences_at_different_positions_in_one_call():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 2, 9, 4))
    v = rng.standard_normal((2, 2, 9, 4))
    k_pages, tables = scatter_into_blocks(k, 4, rng, 2)
    v_pages = np.full_like(k_pages, np.nan)                                     # unused slots are never read
    for b in range(2):
        for j in range(9):
            v_pages[tables[b, j // 4], :, j % 4] = v[b, :, j]
    q = rng.standard_normal((3, 2, 4))
    seq_of, positions = np.array([1, 0, 1]), np.array([2, 8, 5])               # a prefill chunk and a decode
    got = native.paged_attention.paged_attention_forward(q, k_pages, v_pages, tables, seq_of, positions)
    for i, (b, p) in enumerate(zip(seq_of, positions)):
        want = reference.attention_forward(q[i][None, :, None], k[b:b + 1, :, :p + 1], v[b:b + 1, :, :p + 1])[0]
        np.testing.assert_allclose(got[i], want[0, :, 0], rtol=1e-12, atol=1e-12)


def test_paged_attention_binding_rejects_bad_arguments():
    q = np.zeros((2, 2, 4), np.float32)
    pages = np.zeros((3, 1, 4, 4), np.float32)
    tables = np.array([[0, 1], [2, 0]], np.int64)
    seq, pos = np.array([0, 1], np.int64), np.array([3, 5], np.int64)

    def call(**changes):
        args = dict(q=q, k_pages=pages, v_pages=pages, block_tables=tables, seq_of=seq, positions=pos, window=0,
                    alibi_slopes=None)
        args.update(changes)
        return native._C.paged_attention_forward(**args)

    call()
    with pytest.raises(ValueError, match=r"seq_of\[1\] = 2 is not a row of the 2 block tables"):
        call(seq_of=np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match=r"positions\[1\] = 8 is outside the 2 blocks of 4 positions"):
        call(positions=np.array([3, 8], np.int64))
    with pytest.raises(ValueError, match=r"block_tables\[1, 1\] = 5 is not one of the 3 blocks"):
        call(block_tables=np.array([[0, 1], [2, 5]], np.int64))
    with pytest.raises(ValueError, match="block_tables must be int64"):
        call(block_tables=tables.astype(np.int32))
    with pytest.raises(ValueError, match="q has 2 heads but k_pages has 3"):
        call(k_pages=np.zeros((3, 3, 4, 4), np.float32), v_pages=np.zeros((3, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="positions has shape"):
        call(positions=np.array([3], np.int64))
    with pytest.raises(ValueError, match="k_pages and v_pages must have the same dtype"):
        call(v_pages=pages.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        call(k_pages=np.zeros((3, 1, 8, 4), np.float32)[:, :, ::2], v_pages=np.zeros((3, 1, 8, 4), np.float32)[:, :, ::2])
