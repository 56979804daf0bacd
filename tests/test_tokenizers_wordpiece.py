"""WordPiece (BERT-style): greedy longest-match-first with ## and [UNK], BERT's basic
pre-tokenization, likelihood-scored merges worked by hand, vocab.txt, parity with HF tokenizers."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.tokenizers import WordPieceTokenizer, load
from minillm.tokenizers.wordpiece import SPECIALS, basic_tokenize

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
    assert tok.decode(tok.encode(text)) == " ".join(words)


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
