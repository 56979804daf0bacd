"""Attention sinks (nn.SinkKVCache, minillm/streaming.py): while everything fits, streaming equals the
ordinary forward; past the fit, memory stays constant and the cache holds exactly the first n_sink
tokens and the last window; attention over it equals dense attention over those tokens at their
cache positions; and on a model trained at a short context, perplexity stays flat far past it with
sinks while the plain growing cache fails."""
import gzip
import os

import numpy as np
import pytest

import minillm.functional as F
from minillm import nn
from minillm.models import DecoderLM, ModelConfig
from minillm.streaming import streaming_generate, streaming_nll


def tiny(positions="rope", **kw):
    config = ModelConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=16, positions=positions,
                         norm="rmsnorm", activation="swiglu", bias=False, init_std=0.2, **kw)
    return DecoderLM(config, rng=np.random.default_rng(0))


def test_within_the_cache_streaming_is_the_forward():
    model = tiny()
    ids = np.random.default_rng(1).integers(0, 30, size=20)
    logits = model(ids[None]).data[0]
    want = -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(19), ids[1:]]
    np.testing.assert_allclose(streaming_nll(model, ids, sinks=(4, 24)), want, atol=1e-4)
    np.testing.assert_allclose(streaming_nll(model, ids, sinks=None), want, atol=1e-4)


def test_the_cache_keeps_the_sinks_and_the_last_window_at_constant_size():
    cache = nn.SinkKVCache(1, 1, 2, 3, 1)
    for t in range(10):
        x = np.full((1, 1, 1, 1), float(t))
        keys, _ = cache.append(x, x)
        held = list(range(t)) if t <= 5 else [0, 1] + list(range(t - 3, t))   # 2 sinks, then the last 3
        assert keys[0, 0, :, 0].tolist() == held + [t]
    assert cache.k.shape == (1, 1, 5, 1) and cache.length == 5 and cache.seen == 10
    assert cache.k[0, 0, :, 0].tolist() == [0, 1, 7, 8, 9]


def test_sink_attention_is_dense_attention_over_the_kept_tokens_at_cache_positions():
    """One block past the fit: its output for the last token equals F.attention over the kept tokens'
    keys rotated at places 0..L-1 (StreamingLLM's positions)."""
    model = tiny()
    attn = model.blocks[0].attn
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 12, 16)).astype(np.float32)
    cache = nn.SinkKVCache(1, 2, 2, 4, 8)
    for t in range(12):
        y = attn.infer(x[:, t:t + 1], np.array([cache.length]), None, cache)
    kept = np.r_[0:2, 7:12]                                            # sinks, the window before, the new one
    xs = x[:, kept]
    want = attn.composed(xs, np.arange(len(kept))).data[:, -1]         # dense attention, positions 0..6
    np.testing.assert_allclose(y[:, -1], want, atol=1e-5)


def test_generation_runs_far_past_the_context_at_constant_memory():
    model = tiny()
    out = streaming_generate(model, [1, 2, 3], 100, sinks=(2, 20), seed=0)     # context 32
    assert len(out) == 100 and all(0 <= t < 30 for t in out)
    with pytest.raises(ValueError, match="must be less than the context"):
        model.new_caches(1, sinks=(8, 24))
    with pytest.raises(ValueError, match="attention sinks need softmax attention with RoPE"):
        tiny(positions="learned").new_caches(1, sinks=(2, 8))


def _shakespeare():
    path = os.path.join(os.path.dirname(__file__), "..", "minillm", "assets", "tinyshakespeare.txt.gz")
    with gzip.open(path, "rt") as f:
        return f.read(200_000)


def test_perplexity_stays_flat_past_the_trained_context_where_the_plain_cache_fails():
    """A RoPE model trained at context 16 reads 256 characters. Past the first 32, the sink cache's loss
    equals the model's loss on the same text cut into chunks of its context (what it was trained for),
    while the plain cache (every token kept, positions up to 255) is clearly worse. (At this size the
    rolling window without sinks does as well as with them: the sinks' role shows in larger models.)"""
    from minillm.optim import AdamW
    text = _shakespeare()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    T = 16
    config = ModelConfig(vocab_size=len(chars), block_size=T, n_layer=2, n_head=2, n_embd=32, positions="rope",
                         norm="rmsnorm", activation="swiglu", bias=False)
    model = DecoderLM(config, rng=np.random.default_rng(0))
    optimizer = AdamW([{"params": dict(model.named_parameters()), "weight_decay": 0.0}], lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        starts = rng.integers(0, 150_000, size=16)
        x = np.stack([ids[s:s + T] for s in starts])
        y = np.stack([ids[s + 1:s + T + 1] for s in starts])
        loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seq = ids[160_000:160_000 + 16 * T]
    far = seq[2 * T:]
    chunked = []
    for i in range(0, len(far) - 1, T):
        piece = far[i:i + T + 1]
        logits = model.infer(piece[None, :-1])[0].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        chunked.extend(-logp[np.arange(len(piece) - 1), piece[1:]])
    within = float(np.mean(chunked))
    sinks = streaming_nll(model, seq, sinks=(4, T // 2))[2 * T - 1:].mean()
    plain = streaming_nll(model, seq, sinks=None)[2 * T - 1:].mean()
    assert sinks < within + 0.05, (sinks, within)
    assert plain > within + 0.1, (plain, within)
