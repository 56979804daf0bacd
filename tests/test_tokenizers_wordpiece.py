"""WordPiece (BERT-style): greedy longest-match-first with ## and [UNK], BERT's basic
pre-tokenization, likelihood-scored merges worked by hand, vocab.txt, parity with HF tokenizers."""
import itertools
import os
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.tokenizers import UnigramTokenizer, WordPieceTokenizer, load
from minillm.tokenizers.wordpiece import SPECIALS, basic_tokenize

try:
    import tokenizers.models as hf_models
except ImportError:
    hf_models = None

HERE = os.path.dirname(__file__)
CORPUS = open(os.path.join(HERE, "data", "tinyshakespeare_head.txt"), encoding="utf-8").read()


@pytest.fixture(scope="module")
def trained():
    return WordPieceTokenizer.train(CORPUS, 600)


def test_greedy_longest_match_first_as_in_berts_docstring():
    tok = WordPieceTokenizer(list(SPECIALS) + ["un", "##aff", "##able", "u", "##n", "##a", "##f", "##b", "##l", "##e"])
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("unable unz") == ["un", "##able", "[UNK]"]   # no piece for "z": the whole word is [UNK]
    assert tok.decode(tok.encode("unaffable unable")) == "unaffable unable"


def test_basic_tokenization_splits_punctuation_and_cjk_and_folds_case_and_accents():
    assert basic_tokenize("Héllo, Wörld!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo, Wörld!", lowercase=False) == ["Héllo", ",", "Wörld", "!"]
    assert basic_tokenize("a日本b\x00\tc") == ["a", "日", "本", "b", "c"]


def test_training_joins_the_pair_with_the_best_likelihood_score_worked_by_hand():
    # symbols a, ##b (3 each) and c, ##d (1 each): score(a, ##b) = 3 / (3 * 3), score(c, ##d) = 1 / (1 * 1).
    tok = WordPieceTokenizer.train("ab ab ab cd", len(SPECIALS) + 4 + 1)
    assert tok.vocab[-1] == "cd"
    tok = WordPieceTokenizer.train("ab ab ab cd", len(SPECIALS) + 4 + 2)
    assert tok.vocab[-2:] == ["cd", "ab"]


@given(text=st.text(max_size=200))
def test_decode_encode_is_the_pre_tokenized_text_when_trained_on_it(text):
    words = basic_tokenize(text)
    if not words:
        return
    tok = WordPieceTokenizer.train(text, 10000)   # the alphabet is in the vocabulary: no [UNK]
    assert tok.decode(tok.encode(text, disallowed_special=())) == " ".join(words)   # "[UNK]" in text is text


def test_training_is_deterministic(trained):
    assert WordPieceTokenizer.train(CORPUS, 600).vocab == trained.vocab
    assert trained.vocab_size == 600


def test_vocab_txt_and_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "tok")
    back = load(str(tmp_path / "tok"))
    assert back.vocab == trained.vocab and back.encode(CORPUS) == trained.encode(CORPUS)
    plain = load(str(tmp_path / "tok" / "vocab.txt"))
    assert plain.encode(CORPUS) == trained.encode(CORPUS)


def test_ids_equal_hf_tokenizers_bert_wordpiece_on_the_same_vocabulary(trained):
    hf = pytest.importorskip("tokenizers")
    bert = hf.BertWordPieceTokenizer({t: i for i, t in enumerate(trained.vocab)}, lowercase=True)
    text = CORPUS + " Crème brûlée, naïve café! 日本語 x\u0301"
    assert bert.encode(text, add_special_tokens=False).ids == trained.encode(text)


def test_bad_input_gives_clear_errors(trained):
    with pytest.raises(ValueError, match="smaller than the 5 special tokens plus the corpus's alphabet"):
        WordPieceTokenizer.train(CORPUS, 20)
    with pytest.raises(ValueError, match="corpus is empty"):
        WordPieceTokenizer.train(["", " \n"], 100)
    with pytest.raises(ValueError, match="out of range"):
        trained.decode([10**6])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        WordPieceTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="not allowed"):
        trained.encode("hi [CLS]")


# ---- the edge rules of encoding: the word-length limit, a missing "##" piece, greedy without backtracking


def wordpiece_by_definition(vocab, word, limit):
    """Greedy longest-match-first: the longest vocabulary entry that is a prefix of the word, then the
    longest "##" entry that is a prefix of the rest, ...; [UNK] for the whole word if some rest has
    none, or if the word has more than `limit` characters."""
    if len(word) > limit:
        return ["[UNK]"]
    out, start = [], 0
    while start < len(word):
        prefix = "" if start == 0 else "##"
        ends = [end for end in range(start + 1, len(word) + 1) if prefix + word[start:end] in vocab]
        if not ends:
            return ["[UNK]"]
        out.append(prefix + word[start:max(ends)])
        start = max(ends)
    return out


def test_edge_rules_worked_by_hand():
    tok = WordPieceTokenizer(list(SPECIALS) + ["a", "##b", "z", "abc", "##bcd", "##a"])
    assert tok.tokenize("ab") == ["a", "##b"]
    assert tok.tokenize("az ab") == ["[UNK]", "a", "##b"]   # "z" starts words only: no "##z", so all of "az" is [UNK]
    assert tok.tokenize("b") == ["[UNK]"]                   # "##b" continues words only
    assert tok.tokenize("abcd") == ["[UNK]"]                # greedy takes "abc"; no "##d"; "a ##bcd" is not tried
    assert tok.tokenize("a" + "b" * 99) == ["a"] + ["##b"] * 99          # 100 characters: the limit itself
    assert tok.tokenize("a" + "b" * 100) == ["[UNK]"]                    # 101: more than the limit
    short = WordPieceTokenizer(tok.vocab, max_input_chars_per_word=3)
    assert short.tokenize("aba abab") == ["a", "##b", "##a", "[UNK]"]


@st.composite
def vocab_words_limit(draw):
    pieces = ["".join(t) for n in (1, 2, 3) for t in itertools.product("ab", repeat=n)]
    vocab = draw(st.lists(st.sampled_from(pieces + ["##" + p for p in pieces]), min_size=1, max_size=14, unique=True))
    words = draw(st.lists(st.text("ab", min_size=1, max_size=8), min_size=1, max_size=4))
    return list(SPECIALS) + vocab, words, draw(st.integers(1, 9))


@given(vocab_words_limit())
def test_encoding_is_greedy_longest_match_first_with_its_edge_rules(case):
    vocab, words, limit = case
    tok = WordPieceTokenizer(vocab, max_input_chars_per_word=limit)
    expected = [t for w in words for t in wordpiece_by_definition(set(vocab), w, limit)]
    assert tok.tokenize(" ".join(words)) == expected


@pytest.mark.skipif(hf_models is None, reason="the tokenizers package is not installed")
@given(vocab_words_limit())
def test_encoding_equals_hf_tokenizers_wordpiece_model(case):
    vocab, words, limit = case
    hf = hf_models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=limit)
    tok = WordPieceTokenizer(vocab, max_input_chars_per_word=limit)
    assert tok.tokenize(" ".join(words)) == [t.value for w in words for t in hf.tokenize(w)]


# ---- training pinned to its definition, and the options that must survive training and files


def merges_by_definition(words, freqs, n_new, known):
    """Recount everything each round and join the pair with the highest count(ab) / (count(a) count(b)),
    ties to the lowest (a, b); a join that makes a token already known joins but adds nothing."""
    words, new = [list(w) for w in words], []
    while len(new) < n_new:
        sym, pair = {}, {}
        for w, f in zip(words, freqs):
            for s in w:
                sym[s] = sym.get(s, 0) + f
            for p in zip(w, w[1:]):
                pair[p] = pair.get(p, 0) + f
        if not pair:
            break
        a, b = min(pair, key=lambda p: (-pair[p] / (sym[p[0]] * sym[p[1]]), p))
        c = a + b[2:]
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(c)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
        if c not in known:
            known.add(c)
            new.append(c)
    return new


@given(st.lists(st.text("abcd", min_size=1, max_size=7), min_size=1, max_size=25), st.integers(0, 30))
def test_training_makes_the_merges_of_its_definition(words, n_new):
    counts = Counter(words)
    split = [[w[0]] + ["##" + c for c in w[1:]] for w in counts]
    alphabet = sorted({s for w in split for s in w})
    base = list(SPECIALS) + alphabet
    tok = WordPieceTokenizer.train(" ".join(words), len(base) + n_new)
    assert tok.vocab == base + merges_by_definition(split, list(counts.values()), n_new, set(base))


def test_training_on_a_real_corpus_makes_the_merges_of_its_definition(trained):
    # long enough for the trainer's lazy heap to be rebuilt several times
    counts = Counter(basic_tokenize(CORPUS))
    split = [[w[0]] + ["##" + c for c in w[1:]] for w in counts]
    base = list(SPECIALS) + sorted({s for w in split for s in w})
    assert trained.vocab == base + merges_by_definition(split, list(counts.values()), 600 - len(base), set(base))


def test_options_survive_training_saving_and_loading(tmp_path):
    tok = WordPieceTokenizer.train("Café naïve café", 100, strip_accents=False, special_tokens=("[UNK]", "[FOO]"))
    assert tok.tokenize("café") == ["café"] and tok.strip_accents is False
    assert tok.special_tokens == {"[UNK]": 0, "[FOO]": 1}
    tok.save(tmp_path / "tok")
    back = load(str(tmp_path / "tok"))
    assert back.tokenize("Naïve") == ["naïve"] and back.special_tokens == tok.special_tokens
    plain = WordPieceTokenizer.from_vocab_txt(str(tmp_path / "tok" / "vocab.txt"), strip_accents=False)
    assert plain.tokenize("café") == ["café"]
    assert WordPieceTokenizer.from_vocab_txt(str(tmp_path / "tok" / "vocab.txt")).tokenize("café") == [
        "c", "##a", "##f", "##e"]                                          # the default strips the accent


def test_vocabulary_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="tokens must be non-empty and on one line, got \\['a\\\\nb'\\]"):
        WordPieceTokenizer(["[UNK]", "a\nb"])
    with pytest.raises(ValueError, match="a token occurs twice in the vocabulary"):
        WordPieceTokenizer(["[UNK]", "a", "a"])
    WordPieceTokenizer(["[UNK]", "a"]).save(tmp_path)
    with pytest.raises(ValueError, match="holds a 'wordpiece' tokenizer, not 'unigram'"):
        UnigramTokenizer.load(str(tmp_path))
