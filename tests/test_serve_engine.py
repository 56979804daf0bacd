"""The serving engine (minillm/serve/): continuous batching gives each request what generate() gives it
alone; a seed gives the same text alone or batched; prefixes are shared; preemption recomputes the
same answer; blocks come back when requests end, are cancelled, time out or fail."""
import numpy as np
import pytest

from minillm.generate import generate
from minillm.models import DecoderLM, ModelConfig
from minillm.serve import BlockManager, Engine, EngineConfig, OutOfBlocks, SamplingParams, chain_hashes
from minillm.tokenizers.char import CharTokenizer

FLAVOURS = {
    "gpt2 learned": dict(),
    "llama rope gqa": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2, bias=False),
    "alibi mqa window": dict(positions="alibi", n_kv_head=1, window=6),
}
TOKENIZER = CharTokenizer("abcdefghijklm")
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2], [9], [3, 3, 3, 3, 3, 3, 3]]


def tiny_model(flavour="llama rope gqa", dtype=np.float64):
    config = ModelConfig(vocab_size=13, block_size=64, n_layer=2, n_head=4, n_embd=16, init_std=0.5,
                         **FLAVOURS[flavour])
    return DecoderLM(config, rng=np.random.default_rng(0), dtype=dtype).eval()


def engine(model, **config):
    settings = dict(num_blocks=64, block_size=4, max_batch=4, max_step_tokens=8)
    settings.update(config)
    return Engine(model, TOKENIZER, EngineConfig(**settings))


def ids(request):
    return [o.id for o in request.outputs]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_continuous_batching_gives_what_generate_gives_each_prompt_alone(flavour):
    model = tiny_model(flavour)
    eng = engine(model)
    first = [eng.add_request(p, SamplingParams(max_tokens=10, temperature=0)) for p in PROMPTS[:2]]
    for _ in range(3):                                              # the others join a running batch
        eng.step()
    later = [eng.add_request(p, SamplingParams(max_tokens=10, temperature=0)) for p in PROMPTS[2:]]
    while eng.has_work():
        eng.step()
    alone = [generate(model, [p], 10, temperature=0)[0] for p in PROMPTS]
    assert [ids(r) for r in first + later] == alone
    assert eng.blocks.refs == [0] * eng.blocks.num_blocks            # every block came back


def test_a_seed_gives_the_same_text_alone_and_batched():
    model = tiny_model()
    params = [SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3, 4)]
    alone = [ids(engine(model).generate([p], params[i])[0]) for i, p in enumerate(PROMPTS)]
    eng = engine(model)
    batched = [eng.add_request(p, params[i]) for i, p in enumerate(PROMPTS)]
    while eng.has_work():
        eng.step()
    assert [ids(r) for r in batched] == alone
    assert len({tuple(a) for a in alone}) > 1


def test_a_repeated_prefix_is_computed_once_and_gives_the_same_answer():
    model = tiny_model()
    system = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1]                 # 13 tokens: 3 full blocks of 4
    eng = engine(model)
    first = eng.generate([system + [5, 6]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert first.cached_prompt_tokens == 0 and eng.blocks.prefix_hits == 0
    computed = eng.stats["tokens_computed"]
    second = eng.generate([system + [7]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert second.cached_prompt_tokens == 12 and eng.blocks.prefix_hits == 3
    assert eng.stats["tokens_computed"] - computed == len(system) + 1 - 12 + 4   # the rest, then 4 decode steps
    assert ids(second) == generate(model, [system + [7]], 5, temperature=0)[0]


def test_preemption_recomputes_the_same_answer():
    model = tiny_model()
    params = SamplingParams(max_tokens=20, temperature=0.8, seed=5)
    alone = [ids(engine(model).generate([p], params)[0]) for p in PROMPTS]
    eng = engine(model, num_blocks=12)                             # too few blocks for all four at once
    batched = eng.generate(PROMPTS, params)
    assert eng.scheduler.preemptions > 0
    assert [ids(r) for r in batched] == alone
    assert all(r.finish_reason == "length" for r in batched)
    assert eng.blocks.refs == [0] * 12


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps():
    model = tiny_model()
    eng = engine(model, max_step_tokens=4)
    short = eng.add_request([1, 2], SamplingParams(max_tokens=6, temperature=0))
    eng.step()
    long = eng.add_request(list(range(13)) * 3, SamplingParams(max_tokens=2, temperature=0))
    while not long.outputs:
        eng.step()
        if not short.finished:
            assert eng.stats["last_batch"] == 2                      # the short one decodes every step
    assert short.finished and len(short.outputs) == 6
    assert ids(long) == generate(model, [list(range(13)) * 3], 1, temperature=0)[0]


def test_cancel_and_timeout_end_a_request_and_free_its_blocks():
    model = tiny_model()
    eng = engine(model)
    cancelled = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=30, temperature=0))
    timed = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0, timeout=0.0))
    eng.step()
    assert timed.finish_reason == "timeout"
    assert eng.blocks.num_used == len(cancelled.blocks) > 0
    eng.cancel(cancelled)
    eng.step()
    assert cancelled.finish_reason == "cancelled" and eng.blocks.num_used == 0 and not eng.has_work()


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(monkeypatch, capsys):
    model = tiny_model()
    eng = engine(model)
    broken = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0))
    real = model.infer
    monkeypatch.setattr(model, "infer", lambda *a, **k: 1 / 0)
    eng.step()
    assert broken.finish_reason == "error" and "ZeroDivisionError" in broken.error
    monkeypatch.setattr(model, "infer", real)
    again = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=3, temperature=0))[0]
    assert ids(again) == generate(model, [PROMPTS[0]], 3, temperature=0)[0]
    assert eng.blocks.num_used == 0


def test_stop_strings_and_stop_tokens_end_the_text():
    model = tiny_model()
    eng = engine(model)
    full = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=10, temperature=0))[0]
    text = full.text
    cut = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=10, temperature=0, stop=(text[3:5],)))[0]
    assert cut.text == text[:text.find(text[3:5])] and cut.finish_reason == "stop"
    token = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=10, temperature=0,
                                                     stop_token_ids=(full.outputs[2].id,)))[0]
    assert len(token.outputs) == [o.id for o in full.outputs].index(full.outputs[2].id)


def test_requests_the_engine_cannot_serve_are_refused_up_front():
    eng = engine(tiny_model(), num_blocks=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request([13])
    with pytest.raises(ValueError, match="context is 64"):
        eng.add_request([1] * 64)
    with pytest.raises(ValueError, match="need 6 KV blocks but the cache has 4"):
        eng.add_request([1] * 20, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="temperature must be in"):
        eng.add_request([1], SamplingParams(temperature=-1))


def test_block_manager_shares_cached_prefixes_and_evicts_the_oldest():
    blocks = BlockManager(3, 2)
    hashes = chain_hashes([1, 2, 3, 4, 5], 2)
    assert len(hashes) == 2 and hashes != chain_hashes([9, 9, 3, 4], 2)[:2]
    assert chain_hashes([9, 9, 3, 4], 2)[1] != hashes[1]              # same block, other prefix: other hash
    a, b = blocks.allocate(), blocks.allocate()
    blocks.register(a, hashes[0])
    blocks.register(b, hashes[1])
    blocks.release([a, b])
    assert blocks.num_free == 3
    assert blocks.take_cached(hashes + [123]) == [a, b] and blocks.refs[a] == 1
    blocks.release([a, b])
    c = blocks.allocate()                                            # the never-cached block goes first
    assert c not in (a, b)
    d = blocks.allocate()                                            # then the least recently freed one
    assert d == a and blocks.take_cached(hashes) == []
    blocks.allocate()
    with pytest.raises(OutOfBlocks):
        blocks.allocate()
    with pytest.raises(RuntimeError, match="released more often"):
        blocks.release([c, c])


def test_a_prompt_of_whole_cached_blocks_still_runs_its_last_token():
    model = tiny_model()
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]                                 # exactly two blocks of 4
    eng = engine(model)
    first = eng.generate([prompt], SamplingParams(max_tokens=3, temperature=0))[0]
    again = eng.add_request(prompt, SamplingParams(max_tokens=3, temperature=0))
    for _ in range(10):
        eng.step()
    assert again.finished and again.cached_prompt_tokens == 4         # the block of the last token runs again
    assert ids(again) == ids(first) == generate(model, [prompt], 3, temperature=0)[0]


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1"])
def test_a_quantized_model_serves_as_generate_runs_it(scheme):
    from minillm.nn import quantize_model
    config = ModelConfig(vocab_size=13, block_size=64, n_layer=2, n_head=4, n_embd=32, init_std=0.5,
                         **FLAVOURS["llama rope gqa"])
    model = quantize_model(DecoderLM(config, rng=np.random.default_rng(0)).eval(), scheme)
    batched = engine(model).generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0))
    assert [ids(r) for r in batched] == [generate(model, [p], 6, temperature=0)[0] for p in PROMPTS]


def test_a_request_whose_sampling_fails_ends_alone(monkeypatch):
    model = tiny_model()
    eng = engine(model)
    bad = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=4, temperature=0))
    good = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=4, temperature=0))
    real = eng._sample
    monkeypatch.setattr(eng, "_sample", lambda r, logits: real(r, logits) if r is not bad else 1 / 0)
    while eng.has_work():
        eng.step()
    assert bad.finish_reason == "error" and good.finish_reason == "length"
    assert ids(good) == generate(model, [PROMPTS[1]], 4, temperature=0)[0]
    assert eng.stats["requests_finished"] == 2 and eng.blocks.num_used == 0
