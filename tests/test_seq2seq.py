"""The data and generation of the encoder families: BERT's masking, the generated seq2seq tasks and
their held-out split, T5's span corruption, and greedy / sampled / beam-search generation."""
import numpy as np
import pytest

from minillm.autograd import no_grad
from minillm.mlm import IGNORE, mask_tokens
from minillm.models import EncoderDecoderModel, Seq2SeqConfig
from minillm.seq2seq import generate_seq2seq
from minillm.seq2seq_data import (TASKS, draw_examples, is_held_out, make_example, random_spans_noise_mask,
                                  span_corrupt)

SPECIALS = np.array([0, 1, 2, 3, 4])


def test_masking_chooses_15_percent_of_ordinary_tokens_and_replaces_80_10_10():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(400, 40))
    ids[:, 0], ids[:, -1] = 2, 3                                           # [CLS] ... [SEP]
    inputs, labels = mask_tokens(ids, rng, 100, 4, SPECIALS)
    chosen = labels != IGNORE
    assert np.all(chosen.sum(axis=1) == round(0.15 * 38))                  # per row, of the non-special tokens
    assert not chosen[:, [0, -1]].any()
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])           # what is not chosen stays
    masked = (inputs == 4) & chosen
    unchanged = (inputs == ids) & chosen
    randomised = chosen & ~masked & ~unchanged
    n = chosen.sum()
    assert abs(masked.sum() / n - 0.8) < 0.02 and abs(unchanged.sum() / n - 0.1) < 0.02
    assert abs(randomised.sum() / n - 0.1) < 0.02
    assert not np.isin(inputs[randomised], SPECIALS).any()


def test_masking_leaves_rows_of_special_tokens_alone_and_picks_one_in_short_rows():
    rng = np.random.default_rng(1)
    inputs, labels = mask_tokens(np.array([[2, 3, 0], [2, 7, 3]]), rng, 10, 4, SPECIALS)
    assert (labels[0] == IGNORE).all() and labels[1, 1] == 7


@pytest.mark.parametrize("task", TASKS)
def test_tasks_give_their_answers_and_never_share_a_source_between_splits(task):
    rng = np.random.default_rng(2)
    for _ in range(50):
        src, tgt = make_example(task, rng, 8)
        if task == "reverse":
            assert tgt == src[::-1]
        elif task == "sort":
            assert tgt == "".join(sorted(src))
        else:
            a, b = src.split("+")
            assert int(tgt) == int(a) + int(b)
    train = {s for s, _ in draw_examples(task, rng, 300, 8, "train")}
    val = {s for s, _ in draw_examples(task, rng, 100, 8, "val")}
    assert not train & val and all(is_held_out(s) for s in val)


@pytest.mark.parametrize("length", [10, 64, 200])
def test_span_corruption_masks_the_density_in_spans_and_both_sides_rebuild_the_text(length):
    rng = np.random.default_rng(3)
    noise = random_spans_noise_mask(length, 0.15, 3.0, rng)
    assert noise.sum() == min(max(round(length * 0.15), 1), length - 1) and not noise[0]
    starts = np.flatnonzero(noise & ~np.concatenate([[False], noise[:-1]]))
    assert len(starts) == max(round(noise.sum() / 3.0), 1)
    ids = list(range(100, 100 + length))
    sentinels = [90 - k for k in range(len(starts))]
    src, tgt = span_corrupt(ids, noise, sentinels, eos=1)
    assert src[-1] == tgt[-1] == 1
    rebuilt, spans, k = [], {}, None
    for t in tgt[:-1]:                                  # sentinel -> the span it stands for
        if t in sentinels:
            k = t
            spans[k] = []
        else:
            spans[k].append(t)
    for t in src[:-1]:
        rebuilt += spans[t] if t in sentinels else [t]
    assert rebuilt == ids


def tiny_model(seed=0, vocab=9):
    return EncoderDecoderModel(Seq2SeqConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=8, d_ff=16,
                                             init_std=0.5, num_buckets=8, max_distance=16),
                               rng=np.random.default_rng(seed))


def greedy_without_cache(model, source, steps):
    out = [model.config.decoder_start_token_id]
    with no_grad():
        for _ in range(steps):
            logits = model(np.array([source]), decoder_input_ids=np.array([out])).data[0, -1]
            token = int(np.argmax(logits))
            if token == model.config.eos_token_id:
                break
            out.append(token)
    return out[1:]


def test_greedy_generation_with_the_caches_equals_rerunning_the_decoder():
    model = tiny_model()
    sources = [[3, 4, 5, 6, 1], [7, 8, 1]]
    got = generate_seq2seq(model, sources, max_new_tokens=6)
    assert got == [greedy_without_cache(model, s, 6) for s in sources]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_source_is_encoded_and_projected_for_cross_attention_once_per_generation(monkeypatch, num_beams):
    """The encoder runs once and each decoder block's cross-attention K/V are made once (not per
    token); the decoder's self-attention runs one new position a step on its KV cache."""
    model = tiny_model()
    calls = {"encode": 0, "project_kv": 0, "decode_tokens": []}
    encode, decode = model.encode, model.decode
    projections = [block.cross.project_kv for block in model.decoder]

    def counting(i):
        def project(memory):
            calls["project_kv"] += 1
            return projections[i](memory)
        return project

    def counted_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def counted_decode(tgt, *a, **k):
        calls["decode_tokens"].append(np.shape(tgt)[1])
        return decode(tgt, *a, **k)

    monkeypatch.setattr(model, "encode", counted_encode)
    monkeypatch.setattr(model, "decode", counted_decode)
    for i, block in enumerate(model.decoder):
        monkeypatch.setattr(block.cross, "project_kv", counting(i))
    out = generate_seq2seq(model, [[3, 4, 5, 6, 1], [7, 8, 1]], max_new_tokens=6, num_beams=num_beams)
    assert calls["encode"] == 1 and calls["project_kv"] == len(model.decoder)
    assert set(calls["decode_tokens"]) == {1} and len(calls["decode_tokens"]) >= max(len(o) for o in out)


def log_probs(model, source, prefix):
    """log p(next token | source, prefix) over the vocabulary, by a plain teacher-forced pass."""
    with no_grad():
        logits = model(np.array([source]), decoder_input_ids=np.array([[0] + prefix])).data[0, -1].astype(np.float64)
    z = logits - logits.max()
    return z - np.log(np.exp(z).sum())


def test_beam_search_with_every_sequence_in_its_beams_finds_the_best_one():
    """With length 2 and more beams than sequences, beam search is exhaustive: it must return the
    best of [EOS] and every [a, b] (ended by EOS or by the length limit), by total log p."""
    model, source, eos = tiny_model(seed=3), [3, 4, 5, 1], 1
    first = log_probs(model, source, [])
    scored = {(): first[eos]}
    for a in range(9):
        if a != eos:
            second = log_probs(model, source, [a])
            for b in range(9):
                scored[(a,) if b == eos else (a, b)] = first[a] + second[b]
    best = max(scored, key=scored.get)
    got = generate_seq2seq(model, [source], max_new_tokens=2, num_beams=81, length_penalty=0.0)[0]
    assert tuple(got) == best
    assert generate_seq2seq(model, [source], max_new_tokens=2, num_beams=1)[0] == greedy_without_cache(model, source, 2)


def test_sampling_is_seeded_and_batches_are_independent_of_their_neighbours():
    model = tiny_model(seed=4)
    a = generate_seq2seq(model, [[3, 4, 1]], max_new_tokens=6, temperature=1.0, seed=7)
    assert a == generate_seq2seq(model, [[3, 4, 1]], max_new_tokens=6, temperature=1.0, seed=7)
    alone = generate_seq2seq(model, [[5, 6, 7, 1]], max_new_tokens=6, num_beams=3)
    together = generate_seq2seq(model, [[3, 1], [5, 6, 7, 1]], max_new_tokens=6, num_beams=3)
    assert together[1] == alone[0]


def test_generation_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate_seq2seq(model, [[3, 99]])
    with pytest.raises(ValueError, match="num_beams"):
        generate_seq2seq(model, [[3]], num_beams=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate_seq2seq(model, [[]])
