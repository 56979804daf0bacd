"""Sparse attention (dilated, strided, block-sparse): the patterns' key lists equal their definition's
mask; the native kernel (csrc/sparse_attention.cpp, one portable version) equals the dense reference
with the same mask, forward and backward; F.sparse_attention is gradchecked and equals F.attention
where a pattern is a plain sliding window; the kernel's work is the visible pairs; bad input is refused."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minillm.functional as F
from minillm import kernels
from minillm.kernels import native, reference
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_like

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


@st.composite
def patterns(draw):
    kind = draw(st.sampled_from(["dilated", "strided", "block_sparse"]))
    causal = draw(st.booleans())
    common = dict(kind=kind, causal=causal, n_global=draw(st.integers(0, 2)))
    if kind == "dilated":
        return F.AttentionPattern(**common, window=draw(st.integers(1, 4)), dilation=draw(st.integers(1, 3)))
    if kind == "strided":
        return F.AttentionPattern(**common, stride=draw(st.integers(1, 5)))
    return F.AttentionPattern(**common, block=draw(st.integers(1, 4)), local_blocks=draw(st.integers(0, 1)),
                              global_blocks=draw(st.integers(0, 1)), n_random=draw(st.integers(0, 2)),
                              seed=draw(st.integers(0, 3)))


@st.composite
def cases(draw, max_len=12, dtype=None):
    pattern = draw(patterns())
    B, Hkv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H = Hkv * draw(st.integers(1, 2))
    S = draw(st.integers(1, max_len))
    T = draw(st.integers(1, S))
    D = draw(st.sampled_from([1, 3, 4, 8]))
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    q, k, v, dout = (draw(arrays_like(shape, dtype)) for shape in
                     ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, T, D)))
    return pattern, q, k, v, dout


def dense_by_mask(q, k, v, mask):
    """softmax attention with a (T, S) mask, one query at a time: the definition."""
    B, H, T, D = q.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kv = h // (H // k.shape[1])
            for i in range(T):
                seen = np.flatnonzero(mask[i])
                if len(seen):
                    s = k[b, kv, seen] @ q[b, h, i] / np.sqrt(D)
                    p = np.exp(s - s.max())
                    out[b, h, i] = p / p.sum() @ v[b, kv, seen]
    return out


@given(patterns(), st.integers(1, 40), st.integers(0, 39))
def test_key_lists_equal_the_definition(pattern, S, back):
    T = max(1, S - back)
    indptr, indices = pattern.indices(T, S)
    np.testing.assert_array_equal(reference.sparse_attention.mask_from_indices(indptr, indices, T, S),
                                  pattern.mask(T, S))
    for i in range(T):
        assert np.all(np.diff(indices[indptr[i]:indptr[i + 1]]) > 0)


def test_patterns_by_hand():
    # dilated, window 3, dilation 2, causal: query 6 sees 6, 4, 2
    assert np.flatnonzero(F.AttentionPattern("dilated", window=3, dilation=2).mask(8, 8)[6]).tolist() == [2, 4, 6]
    # strided 3: the last three, and every third before: query 9 sees 0, 3, 6, 7, 8, 9
    assert np.flatnonzero(F.AttentionPattern("strided", stride=3).mask(10, 10)[9]).tolist() == [0, 3, 6, 7, 8, 9]
    # BigBird, blocks of 2, local radius 1, the first block global: query 7 (block 3) sees blocks 0, 2, 3
    assert np.flatnonzero(F.AttentionPattern("block_sparse", block=2).mask(8, 8)[7]).tolist() == [0, 1, 4, 5, 6, 7]
    big = F.AttentionPattern("block_sparse", block=64, n_random=1)
    assert big.visible_pairs(4096, 4096) < 4096 * 4096 // 10        # far fewer than the dense pairs


@needs_native
@settings(max_examples=60)
@given(cases())
def test_native_equals_the_dense_reference(case):
    pattern, q, k, v, dout = case
    lists = pattern.indices(q.shape[2], k.shape[2])
    out, lse = native.sparse_attention.sparse_attention_forward(q, k, v, *lists)
    ref_out, ref_lse = reference.sparse_attention_forward(q, k, v, *lists)
    tol = 1e-5 if q.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse, ref_lse, rtol=tol, atol=tol)
    grads = native.sparse_attention.sparse_attention_backward(dout, q, k, v, out, lse, *lists)
    ref_grads = reference.sparse_attention_backward(dout, q, k, v, ref_out, ref_lse, *lists)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=10 * tol, atol=10 * tol)


@settings(max_examples=25)
@given(cases(max_len=7, dtype=np.float64))
def test_forward_is_the_definition_and_gradients_check(case):
    pattern, q, k, v, _ = case
    want = dense_by_mask(q, k, v, pattern.mask(q.shape[2], k.shape[2]))
    np.testing.assert_allclose(F.sparse_attention(q, k, v, pattern).data, want, atol=1e-12)
    gradcheck(lambda q, k, v: F.sparse_attention(q, k, v, pattern), [q, k, v])


@pytest.mark.parametrize("causal", [True, False])
def test_dilation_one_is_the_sliding_window_of_f_attention(causal):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 4, 20, 8)), rng.standard_normal((2, 2, 20, 8)), rng.standard_normal((2, 2, 20, 8))
    pattern = F.AttentionPattern("dilated", window=5, dilation=1, causal=causal)
    np.testing.assert_allclose(F.attention(q, k, v, pattern=pattern).data,
                               F.attention(q, k, v, causal=causal, window=5).data, atol=1e-12)


@needs_native
def test_rows_with_nan_are_nan_and_rows_without_keys_are_zero():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 4))
    k[0, 0, 1] = np.nan
    indptr = np.array([0, 0, 1, 2, 3, 4, 5])                  # query 0 sees nothing, query i sees key i - 1
    indices = np.array([0, 1, 2, 3, 4])
    out, lse = native.sparse_attention.sparse_attention_forward(q, k, v, indptr, indices)
    assert np.all(out[0, 0, 0] == 0) and lse[0, 0, 0] == np.inf
    assert np.all(np.isnan(out[0, 0, 2])) and np.isnan(lse[0, 0, 2])
    assert np.all(np.isfinite(out[0, 0, [1, 3, 4, 5]]))       # never spread to rows that do not see key 1


@needs_native
def test_bindings_refuse_bad_lists():
    q = np.zeros((1, 1, 3, 4))
    with pytest.raises(ValueError, match="indptr must be"):
        native._C.sparse_attention_forward(q=q, k=q, v=q, indptr=np.array([0, 1], dtype=np.int64),
                                           indices=np.array([0], dtype=np.int64))
    with pytest.raises(ValueError, match="increasing key positions"):
        native._C.sparse_attention_forward(q=q, k=q, v=q, indptr=np.array([0, 1, 2, 3], dtype=np.int64),
                                           indices=np.array([0, 5, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        native._C.sparse_attention_forward(q=q, k=q, v=q, indptr=np.array([0, 1, 2, 3], dtype=np.int32),
                                           indices=np.array([0, 1, 2], dtype=np.int64))


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        F.AttentionPattern("diagonal")
    with pytest.raises(ValueError, match="dilation must be a positive int"):
        F.AttentionPattern("dilated", dilation=0)
    with pytest.raises(ValueError, match="unknown key"):
        F.AttentionPattern.from_dict({"kind": "strided", "strid": 4})
    with pytest.raises(ValueError, match="pattern .* cannot be combined"):
        F.attention(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), window=2,
                    pattern=F.AttentionPattern("strided", stride=2))


@needs_native
def test_native_work_follows_the_visible_pairs():
    """Doubling T at a fixed dilated window about doubles the time, where dense attention would quadruple
    (a loose bound: the machine is shared)."""
    import time
    pattern = F.AttentionPattern("dilated", window=16, dilation=2)
    rng = np.random.default_rng(0)

    def run(T):
        q = rng.standard_normal((1, 2, T, 16)).astype(np.float32)
        lists = pattern.indices(T, T)
        best = np.inf
        for _ in range(3):
            start = time.process_time()
            native.sparse_attention.sparse_attention_forward(q, q[:, :1], q[:, :1], *lists)
            best = min(best, time.process_time() - start)
        return best

    small, large = run(4096), run(16384)
    assert large < 8 * small                                   # dense: 16x


@pytest.mark.parametrize("pattern", [{"kind": "dilated", "window": 3, "dilation": 2},
                                     {"kind": "block_sparse", "block": 4, "n_random": 1, "n_global": 1},
                                     {"kind": "strided", "stride": 3}])
def test_a_sparse_model_forward_infer_and_cache_agree(pattern):
    from minillm.models import DecoderLM, ModelConfig
    config = ModelConfig(vocab_size=20, block_size=24, n_layer=2, n_head=2, n_embd=8, positions="rope",
                         attention_pattern=pattern, init_std=0.3)
    model = DecoderLM(config, rng=np.random.default_rng(0))
    dense = DecoderLM(ModelConfig(**{**config.to_dict(), "attention_pattern": None}), rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 20, size=(2, 20))
    logits = model(ids).data
    np.testing.assert_allclose(model.infer(ids), logits, atol=1e-5)
    caches = model.new_caches(2)
    steps = [model.infer(ids[:, :9], caches=caches)] + [model.infer(ids[:, t:t + 1], caches=caches) for t in range(9, 20)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), logits, atol=1e-5)
    assert not np.allclose(logits[:, -1], dense(ids).data[:, -1], atol=1e-4)   # the pattern hides keys
    model.loss(ids, ids).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="cannot be combined"):
        ModelConfig(positions="rope", window=4, attention_pattern=pattern)


@needs_native
def test_bitwise_the_same_on_any_number_of_threads():
    """Rows are split by the sizes alone: 1, 2 or 3 threads give the same bits (the load may change them)."""
    before, adaptive = native._C.get_num_threads(), native._C.adaptive_threads()
    native._C.set_adaptive_threads(False)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 600, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, 2, 600, 16)).astype(np.float32) for _ in range(2))
    lists = F.AttentionPattern("block_sparse", block=32, n_random=1).indices(600, 600)
    try:
        results = []
        for n in (1, 2, 3):
            native._C.set_num_threads(n)
            out, lse = native.sparse_attention.sparse_attention_forward(q, k, v, *lists)
            results.append((out, lse, *native.sparse_attention.sparse_attention_backward(q, q, k, v, out, lse, *lists)))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)
    finally:
        native._C.set_num_threads(before)
        native._C.set_adaptive_threads(adaptive)


@pytest.mark.parametrize("pattern", [F.AttentionPattern("dilated", window=4, dilation=3, n_global=1),
                                     F.AttentionPattern("strided", stride=4, causal=False),
                                     F.AttentionPattern("block_sparse", block=4, n_random=2, seed=1)])
def test_against_torch_masked_attention(pattern):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v, dout = (rng.standard_normal((2, 2, 24, 8)) for _ in range(4))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    mask = torch.tensor(pattern.mask(24, 24))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    want.backward(torch.tensor(dout))
    Q, K, V = (mm_tensor(a) for a in (q, k, v))
    out = F.sparse_attention(Q, K, V, pattern)
    (out * mm_tensor(dout)).sum().backward()
    np.testing.assert_allclose(out.data, want.detach().numpy(), atol=1e-10)
    for mine, theirs in ((Q, tq), (K, tk), (V, tv)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), atol=1e-10)


def mm_tensor(a):
    from minillm.autograd import Tensor
    return Tensor(a, requires_grad=True)
