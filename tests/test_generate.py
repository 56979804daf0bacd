import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.generate import generate, sample_next
from minillm.models import DecoderLM, ModelConfig

FLAVOURS = {
    "gpt2 learned": dict(),
    "llama rope gqa window": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2, bias=False,
                                  window=4),
    "alibi mqa": dict(positions="alibi", n_kv_head=1),
    "sinusoidal": dict(positions="sinusoidal"),
}


def tiny_model(flavour, dtype=np.float64):
    config = ModelConfig(vocab_size=13, block_size=32, n_layer=2, n_head=4, n_embd=16, init_std=0.5,
                         **FLAVOURS[flavour])
    return DecoderLM(config, rng=np.random.default_rng(0), dtype=dtype)


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 1, 2], [9]]
SAMPLING = [dict(temperature=0), dict(temperature=1.0, top_k=5, seed=3), dict(temperature=0.7, top_p=0.9, seed=4)]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("sampling", range(len(SAMPLING)))
def test_cached_and_uncached_generation_give_the_same_tokens(flavour, sampling):
    model = tiny_model(flavour)
    cached = generate(model, PROMPTS, 12, use_cache=True, **SAMPLING[sampling])
    uncached = generate(model, PROMPTS, 12, use_cache=False, **SAMPLING[sampling])
    assert cached == uncached
    assert [len(o) for o in cached] == [12, 12, 12]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_padded_batch_generates_what_each_prompt_does_alone(flavour):
    model = tiny_model(flavour)
    batch = generate(model, PROMPTS, 8, temperature=0)
    alone = [generate(model, [p], 8, temperature=0)[0] for p in PROMPTS]
    assert batch == alone


def test_cached_logits_equal_the_full_forward_pass_in_float32():
    model = tiny_model("llama rope gqa window", dtype=np.float32)
    ids = np.random.default_rng(1).integers(0, 13, size=(2, 10))
    full = model(ids).data
    caches = model.new_caches(2, dtype=np.float32)
    steps = [model(ids[:, :6], caches=caches).data] + [model(ids[:, t:t + 1], caches=caches).data for t in range(6, 10)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)


def test_stop_tokens_end_a_row_and_are_not_returned():
    model = tiny_model("gpt2 learned")
    free = generate(model, [[1, 2]], 10, temperature=0)[0]
    stop = free[3]
    out = generate(model, [[1, 2]], 10, temperature=0, stop_tokens=[stop])[0]
    assert out == free[:free.index(stop)]


def test_generation_stops_at_the_context_length_and_rejects_bad_prompts():
    model = tiny_model("gpt2 learned")
    assert len(generate(model, [[1] * 30], 10, temperature=0)[0]) == 2
    with pytest.raises(ValueError, match="more than the context length 32"):
        generate(model, [[1] * 33], 1)
    with pytest.raises(ValueError, match="token id 13 is outside the vocabulary"):
        generate(model, [[13]], 1)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 1)


def test_streaming_callback_sees_every_token_in_order():
    model = tiny_model("alibi mqa")
    seen = []
    out = generate(model, PROMPTS, 5, temperature=1.0, seed=0, on_token=lambda row, t: seen.append((row, t)))
    for row in range(3):
        assert [t for r, t in seen if r == row] == out[row]


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(2, 30))
def test_sampling_respects_top_k_and_top_p(seed, B, V):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, V)) * 3
    np.testing.assert_array_equal(sample_next(logits, temperature=0), logits.argmax(-1))
    np.testing.assert_array_equal(sample_next(logits, 1.0, top_k=1, rng=rng), logits.argmax(-1))
    np.testing.assert_array_equal(sample_next(logits, 1.0, top_p=1e-9, rng=rng), logits.argmax(-1))
    k = min(3, V)
    for _ in range(5):
        picks = sample_next(logits, 1.5, top_k=k, rng=rng)
        top = np.argsort(-logits, axis=-1)[:, :k]
        assert all(picks[b] in top[b] for b in range(B))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    picks = sample_next(logits, 1.0, top_p=0.5, rng=rng)
    for b in range(B):   # the pick lies in the smallest set of most likely tokens reaching 0.5
        order = np.argsort(-p[b])
        nucleus = order[: np.searchsorted(np.cumsum(p[b][order]), 0.5) + 1]
        assert picks[b] in nucleus


def test_sampling_matches_the_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    rng = np.random.default_rng(0)
    counts = np.bincount([int(sample_next(logits, 1.0, rng=rng)[0]) for _ in range(4000)], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.2], atol=0.03)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, 1.0, top_k=0)


# ----- decoding pinned to its definition: greedy = argmax of model(ids) over the whole sequence

DECODE_FLAVOURS = {
    "learned": dict(),
    "sinusoidal": dict(positions="sinusoidal"),
    "rope gqa": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2, bias=False),
    "alibi mqa": dict(positions="alibi", n_kv_head=1),
    "learned window": dict(window=3),
    "rope window": dict(positions="rope", window=4),
    "alibi window": dict(positions="alibi", window=2),
    "moe": dict(n_experts=3, top_k=2, capacity_factor=0.5),
}


def decode_model(flavour, block_size=24, dtype=np.float64):
    config = ModelConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=4, n_embd=16, init_std=0.5,
                         **DECODE_FLAVOURS[flavour])
    return DecoderLM(config, rng=np.random.default_rng(1), dtype=dtype)


def greedy_by_hand(model, prompt, n):
    """The definition of greedy decoding: run the model on the whole sequence so far (positions
    0..T-1, no cache, no padding) and append the argmax of the last position's logits."""
    ids = list(prompt)
    model.eval()
    while len(ids) < len(prompt) + n and len(ids) < model.config.block_size:
        logits = model(np.array([ids])).data                       # (1, T, V)
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[len(prompt):]


DECODE_PROMPTS = [[3], [5, 1, 4, 1], [2, 7, 1, 8, 2, 8, 1]]


@pytest.mark.parametrize("flavour", list(DECODE_FLAVOURS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_the_argmax_loop_over_the_whole_sequence(flavour, use_cache):
    model = decode_model(flavour)
    expected = [greedy_by_hand(model, p, 14) for p in DECODE_PROMPTS]
    alone = [generate(model, [p], 14, temperature=0, use_cache=use_cache)[0] for p in DECODE_PROMPTS]
    assert alone == expected
    # the prompts of different lengths together, left-padded into one batch
    assert generate(model, DECODE_PROMPTS, 14, temperature=0, use_cache=use_cache) == expected


def test_float32_greedy_generation_equals_the_argmax_loop():
    # the cache holds the model's dtype (the logits' top-2 gaps here are far above float32 rounding)
    model = decode_model("rope gqa", dtype=np.float32)
    expected = [greedy_by_hand(model, p, 10) for p in DECODE_PROMPTS]
    assert generate(model, DECODE_PROMPTS, 10, temperature=0) == expected


@pytest.mark.parametrize("flavour", ["learned", "rope gqa"])
def test_greedy_generation_fills_the_context_exactly(flavour):
    model = decode_model(flavour, block_size=12)
    prompts = [[0, 4, 2], [9] * 11, [6] * 12]                      # token 0 is a token like any other
    expected = [greedy_by_hand(model, p, 20) for p in prompts]
    assert [len(e) for e in expected] == [9, 1, 0]
    assert [generate(model, [p], 20, temperature=0)[0] for p in prompts] == expected


def test_generation_with_the_cache_runs_the_prompt_once_then_one_token_a_step():
    model = decode_model("learned")
    lengths = []
    infer = model.infer                                      # generation's no-tape forward
    model.infer = lambda ids, *a, **kw: (lengths.append(np.asarray(ids).shape[1]), infer(ids, *a, **kw))[1]
    generate(model, [[1, 2, 3]], 4, temperature=0)
    assert lengths == [3, 1, 1, 1]
    lengths.clear()
    generate(model, [[1, 2, 3]], 4, temperature=0, use_cache=False)
    assert lengths == [3, 4, 5, 6]


def test_sampling_options_reach_the_sampler():
    model = decode_model("alibi mqa")
    greedy = generate(model, DECODE_PROMPTS, 10, temperature=0)
    assert generate(model, DECODE_PROMPTS, 10, temperature=1.0, top_k=1, seed=0) == greedy
    assert generate(model, DECODE_PROMPTS, 10, temperature=1.0, top_p=1e-9, seed=0) == greedy
    assert generate(model, DECODE_PROMPTS, 10, temperature=1.0, seed=0) != greedy


def test_a_stop_token_ends_only_its_own_row():
    model = decode_model("learned")
    free = [greedy_by_hand(model, p, 10) for p in DECODE_PROMPTS]
    stop = free[0][2]
    expected = [f[:f.index(stop)] if stop in f else f for f in free]
    assert any(stop not in f for f in free)
    assert generate(model, DECODE_PROMPTS, 10, temperature=0, stop_tokens=[stop]) == expected


@pytest.mark.parametrize("training", [True, False])
def test_generation_leaves_the_training_mode_as_it_was(training):
    model = decode_model("learned").train(training)
    generate(model, [[1, 2]], 3, temperature=0)
    assert all(m.training == training for _, m in model.named_modules())


# ----- sampling pinned to its definition


def distribution_by_definition(logits, temperature=1.0, top_k=None, top_p=None):
    """softmax(logits / T); keep the top_k largest; renormalise; keep the smallest set of the most
    likely tokens whose probability reaches top_p; renormalise."""
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p /= p.sum()
    order = np.argsort(-p)
    if top_k is not None:
        p[order[top_k:]] = 0.0
        p /= p.sum()
    if top_p is not None:
        n = int(np.argmax(np.cumsum(p[order]) >= top_p)) + 1
        p[order[n:]] = 0.0
        p /= p.sum()
    return p


ROW = np.array([1.3, -0.4, 2.1, 0.2, 0.9])       # softmax ~ [0.24, 0.04, 0.53, 0.08, 0.16]


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=3),
                                     dict(top_k=4, temperature=1.5), dict(top_p=0.7), dict(top_p=0.9),
                                     dict(top_k=2, top_p=0.6), dict(top_k=3, top_p=0.75, temperature=0.8)])
def test_one_row_samples_the_distribution_of_its_definition(options):
    # (top_k, top_p): the nucleus is taken on the top-k distribution, renormalised, as in HF's samplers
    rng, n = np.random.default_rng(0), 2000
    picks = np.concatenate([sample_next(np.stack([ROW, ROW]), rng=rng, **options) for _ in range(n)])   # 2 rows < k
    np.testing.assert_allclose(np.bincount(picks, minlength=5) / (2 * n), distribution_by_definition(ROW, **options),
                               atol=0.03)


def test_rows_are_sampled_independently_and_stably_at_any_scale():
    rng = np.random.default_rng(1)
    rows = np.array([[1000.0, 999.0, 0.0], [-1000.0, -1001.0, -2000.0]])     # exp would overflow / underflow
    picks = sample_next(np.repeat(rows, 2000, axis=0), 1.0, rng=rng).reshape(2, 2000)
    expected = distribution_by_definition(rows[0])
    for row in picks:
        np.testing.assert_allclose(np.bincount(row, minlength=3) / 2000, expected, atol=0.03)
    assert (picks[0] != picks[1]).any()
    np.testing.assert_array_equal(sample_next(rows, temperature=0), [0, 0])
    assert set(sample_next(np.zeros((50, 4)), 1.0).tolist()) <= {0, 1, 2, 3}     # a fresh rng by default


@pytest.mark.parametrize("top_p, kept", [(0.25, 1), (0.2, 1), (0.5, 2), (0.5000001, 3), (0.4999999, 2),
                                         (0.75, 3), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_that_reaches_p_at_the_boundary(top_p, kept):
    # four equally likely tokens: probabilities 1/4 and their sums are exact, so a nucleus that
    # reaches top_p exactly stops there (0.5 keeps two tokens, not three)
    picks = sample_next(np.zeros((4000, 4)), 1.0, top_p=top_p, rng=np.random.default_rng(2))
    counts = np.bincount(picks, minlength=4)
    assert (counts > 0).sum() == kept
    np.testing.assert_allclose(counts[counts > 0] / 4000, 1 / kept, atol=0.03)


def test_sampling_arguments_are_checked():
    logits = np.zeros((1, 3))
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        sample_next(logits, -1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        sample_next(logits, 1.0, top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        sample_next(logits, 1.0, top_k=0)
