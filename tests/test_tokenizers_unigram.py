"""Unigram (SentencePiece-style): Viterbi and sampling on a hand-built model, round trips up to
the normalisation with byte fallback, EM training that finds the frequent words, files, errors."""
import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.tokenizers import UnigramTokenizer, load
from minillm.tokenizers.unigram import _native, normalize, words_of

HERE = os.path.dirname(__file__)
CORPUS = open(os.path.join(HERE, "data", "tinyshakespeare_head.txt"), encoding="utf-8").read()

# log-probabilities chosen so the best segmentations can be worked out by hand.
HAND = [("▁ab", -1.0), ("▁a", -2.0), ("b", -2.0), ("c", -3.0), ("a", -4.0), ("▁", -4.0)]


@pytest.fixture(scope="module")
def hand():
    return UnigramTokenizer(HAND)


@pytest.fixture(scope="module")
def trained():
    return UnigramTokenizer.train(CORPUS, 3 + 256 + 300)


def pieces(tok, ids):
    return [tok.id_to_token(i) for i in ids]


def test_viterbi_picks_the_most_likely_segmentation_worked_by_hand(hand):
    # "▁ab c" scores -4; "▁a b c" -7; "▁ a b c" -13.
    assert pieces(hand, hand.encode("abc")) == ["▁ab", "c"]
    assert pieces(hand, hand.encode("  ab   cab ")) == ["▁ab", "▁", "c", "a", "b"]


def test_characters_without_a_piece_fall_back_to_their_utf8_bytes(hand):
    assert pieces(hand, hand.encode("abé")) == ["▁ab", "<0xC3>", "<0xA9>"]
    assert hand.decode(hand.encode("abé ab")) == "abé ab"


def test_sampling_with_small_alpha_draws_several_segmentations_and_large_alpha_the_best(hand):
    flat = {tuple(hand.encode_sample("abc", alpha=0.0, seed=s)) for s in range(60)}
    assert len(flat) >= 3                 # uniform over the lattice's paths
    sharp = {tuple(hand.encode_sample("abc", alpha=50.0, seed=s)) for s in range(20)}
    assert sharp == {tuple(hand.encode("abc"))}
    assert hand.encode_sample("abc ab", alpha=0.5, seed=7) == hand.encode_sample("abc ab", alpha=0.5, seed=7)


@given(text=st.text())
def test_decode_encode_is_the_normalised_text_on_any_unicode(trained, text):
    assert trained.decode(trained.encode(text)) == normalize(text)


@given(text=st.text(max_size=40), seed=st.integers(0, 1000))
def test_every_sampled_segmentation_decodes_to_the_normalised_text(trained, text, seed):
    assert trained.decode(trained.encode_sample(text, alpha=0.2, seed=seed)) == normalize(text)


def test_training_finds_the_frequent_words_and_keeps_every_character():
    text = "hello world " * 40 + "help held hollow whirl "
    tok = UnigramTokenizer.train(text, 3 + 256 + 20)
    names = {p for p, _ in tok.pieces}
    assert {"▁hello", "▁world"} <= names
    assert set("▁helowrd") <= names
    assert tok.vocab_size <= 3 + 256 + 20     # fewer when the corpus has fewer useful pieces
    assert pieces(tok, tok.encode("hello world")) == ["▁hello", "▁world"]


def test_training_is_deterministic(trained):
    assert UnigramTokenizer.train(CORPUS, 3 + 256 + 300).pieces == trained.pieces


def test_save_and_load_give_the_same_tokenizer(trained, tmp_path):
    trained.save(tmp_path)
    back = load(str(tmp_path))
    assert isinstance(back, UnigramTokenizer) and back.pieces == trained.pieces
    assert back.encode(CORPUS) == trained.encode(CORPUS)


def test_special_tokens_come_first_and_follow_the_policy(trained):
    assert trained.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    assert trained.encode("<s>hi", allowed_special="all")[0] == 1
    with pytest.raises(ValueError, match="not allowed"):
        trained.encode("<s>hi")


def test_bad_input_gives_clear_errors(hand):
    with pytest.raises(ValueError, match="leaves no room"):
        UnigramTokenizer.train(CORPUS, 200)
    with pytest.raises(ValueError, match="corpus is empty"):
        UnigramTokenizer.train(" \n\t ", 400)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        hand.decode([3 + 0xC3])
    with pytest.raises(ValueError, match="out of range"):
        hand.decode([hand.vocab_size])


# ---- the native lattice equals the reference ------------------------------------------------------

needs_native = pytest.mark.skipif(_native() is None, reason="minillm._C is not built or MINILLM_BACKEND=numpy")


@needs_native
@given(text=st.text(max_size=200))
def test_native_viterbi_and_expected_counts_equal_the_reference(trained, text):
    reference = UnigramTokenizer(trained.pieces, use_native=False)
    words = words_of(text)
    freqs = [float(k % 3 + 1) for k in range(len(words))]
    assert trained.viterbi_paths(words) == reference.viterbi_paths(words)
    assert trained.viterbi_paths(words, exclude=5) == reference.viterbi_paths(words, exclude=5)
    ours, ll = trained.expected_counts(words, freqs)
    theirs, ll_ref = reference.expected_counts(words, freqs)
    assert ll == pytest.approx(ll_ref, rel=1e-9, abs=1e-9)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)


@needs_native
def test_native_training_equals_the_reference():
    text = CORPUS[:3000]
    native = UnigramTokenizer.train(text, 3 + 256 + 120)
    reference = UnigramTokenizer.train(text, 3 + 256 + 120, use_native=False)
    assert [p for p, _ in native.pieces] == [p for p, _ in reference.pieces]
    assert [s for _, s in native.pieces] == pytest.approx([s for _, s in reference.pieces], rel=1e-9)


def test_viterbi_on_a_sentencepiece_model_gives_sentencepieces_pieces(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    lines = [line for line in CORPUS.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "m"), vocab_size=400,
                                   model_type="unigram", minloglevel=2, normalization_rule_name="identity",
                                   character_coverage=1.0)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    ours = UnigramTokenizer([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())
                             if not (sp.is_control(i) or sp.is_unknown(i))])
    for line in lines:
        assert pieces(ours, ours.encode(line)) == sp.encode(line, out_type=str)


# ---- Viterbi's tie rule, on the reference and the native lattice ---------------------------------
# Among the most likely segmentations, the one whose last piece starts earliest (is longest) wins,
# then the same rule on the rest of the word: edges ending at a position are tried by ascending
# start and a later one must score strictly more, as in SentencePiece's Viterbi.

LATTICES = [False] + ([True] if _native() is not None else [])


def segmentations(tok, word):
    """Every segmentation of word into pieces (at most max_piece_len characters) and unknown
    characters (those that are no piece, scored as the byte fallback: the lowest log p - 10), as
    (sum of log p, starts from the last piece back, tokens with byte tokens for unknowns)."""
    scores = dict(tok.pieces)
    unk = min(scores.values()) - 10.0

    def ending_at(e):
        if e == 0:
            return [(0.0, (), [])]
        out = []
        for s in range(max(0, e - tok.max_piece_len), e):
            piece = word[s:e]
            if piece in scores:
                out += [(sc + scores[piece], (s,) + starts, toks + [piece]) for sc, starts, toks in ending_at(s)]
        if word[e - 1] not in scores:
            unknown = [f"<0x{b:02X}>" for b in word[e - 1].encode("utf-8")]
            out += [(sc + unk, (e - 1,) + starts, toks + unknown) for sc, starts, toks in ending_at(e - 1)]
        return out

    return ending_at(len(word))


def segmentation_by_definition(tok, word):
    """The most likely segmentation's tokens, ties broken by the rule above."""
    segs = segmentations(tok, word)
    best = max(sc for sc, _, _ in segs)
    return min((starts, toks) for sc, starts, toks in segs if sc == best)[1]


@pytest.mark.parametrize("native", LATTICES)
def test_viterbi_ties_go_to_the_longest_last_piece_worked_by_hand(native):
    # "▁ab" = -2 ties "▁a" + "b" = -1 + -1
    tok = UnigramTokenizer([("▁ab", -2.0), ("▁a", -1.0), ("b", -1.0), ("▁", -5.0), ("a", -5.0)], use_native=native)
    assert pieces(tok, tok.encode("ab")) == ["▁ab"]
    assert pieces(tok, tok.encode("abab")) == ["▁ab", "a", "b"] == segmentation_by_definition(tok, "▁abab")
    # "x" is no piece: "ax" = -5 ties "a" + the unknown "x" = 10 + (-5 - 10)
    tok = UnigramTokenizer([("▁", -1.0), ("a", 10.0), ("ax", -5.0)], use_native=native)
    assert pieces(tok, tok.encode("ax")) == ["▁", "ax"]


@st.composite
def word_and_vocab(draw):
    """A word and a vocabulary of its substrings (and a few others) with small integer log-probabilities."""
    word = "▁" + draw(st.text("abc", min_size=1, max_size=7))
    substrings = sorted({word[s:e] for s in range(len(word)) for e in range(s + 1, min(len(word), s + 4) + 1)})
    chosen = draw(st.lists(st.sampled_from(substrings + ["c", "ba", "▁c"]), min_size=1, max_size=16, unique=True))
    return word[1:], [(p, float(draw(st.integers(-4, -1)))) for p in chosen]


@pytest.mark.parametrize("native", LATTICES)
@given(word_and_vocab(), st.integers(1, 4))
def test_viterbi_is_the_best_segmentation_with_its_tie_rule(native, word_and_vocab, max_piece_len):
    # integer log-probabilities: sums are exact, so ties are real ties, and there are many
    word, vocab = word_and_vocab
    tok = UnigramTokenizer(vocab, max_piece_len=max_piece_len, use_native=native)
    assert pieces(tok, tok.encode(word)) == segmentation_by_definition(tok, "▁" + word)


@pytest.mark.parametrize("word, alpha", [("abc", 0.5), ("abx", 0.3), ("cab", 1.0)])
def test_sampling_draws_each_segmentation_with_probability_p_to_the_alpha(hand, word, alpha):
    segs = segmentations(hand, "▁" + word)                  # "x" is no piece: it is always its byte
    weights = np.exp(alpha * np.array([sc for sc, _, _ in segs]))
    expected = dict(zip((tuple(t) for _, _, t in segs), weights / weights.sum()))
    n = 3000
    drawn = Counter(tuple(pieces(hand, hand.encode_sample(word, alpha=alpha, seed=s))) for s in range(n))
    assert set(drawn) <= set(expected)
    for toks, p in expected.items():
        assert drawn[toks] / n == pytest.approx(p, abs=0.03), toks


def test_special_token_ids_decode_to_their_text(hand):
    assert hand.decode([1, 3 + 256, 2]) == "<s> ab</s>"
    assert hand.decode(np.array([0, 3 + 256])) == "<unk> ab"            # NumPy ints are ids too


def test_training_sizes_and_special_tokens(trained):
    assert trained.vocab_size == 3 + 256 + 300                          # the corpus has enough pieces
    one = UnigramTokenizer.train("hello world " * 10, 1 + 256 + 10, special_tokens="<pad>")
    assert one.special_tokens == {"<pad>": 0} and one.vocab_size <= 1 + 256 + 10
    with pytest.raises(ValueError, match=r"use vocab_size >= 260"):
        UnigramTokenizer.train(CORPUS, 259)


def test_training_seeds_with_the_most_frequent_substrings_first():
    # a seed list of 12 holds only the top substrings by frequency * length: the two words among them
    text = "hello world " * 40 + "help held hollow whirl "
    tok = UnigramTokenizer.train(text, 3 + 256 + 20, seed_size=12)
    assert pieces(tok, tok.encode("hello world")) == ["▁hello", "▁world"]
