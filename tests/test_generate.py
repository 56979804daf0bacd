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
