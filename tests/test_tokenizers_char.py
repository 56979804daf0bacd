"""The character tokenizer: ids are ranks in the sorted set of the training text's characters; it is
a Tokenizer like the others (train, encode, decode, save, load), so data.py treats every kind alike."""
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm import data
from minillm.tokenizers import KINDS, CharTokenizer, Tokenizer, load

HERE = os.path.dirname(__file__)
CORPUS = open(os.path.join(HERE, "data", "tinyshakespeare_head.txt"), encoding="utf-8").read()


def test_ids_are_ranks_in_the_sorted_characters():
    tok = CharTokenizer.train(["hello ", "world"])
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"] and tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([7, 5, 6, 4, 1]) == "world" and tok.id_to_token(0) == " "


@given(st.text(min_size=1, max_size=40))
def test_any_text_round_trips_through_a_tokenizer_trained_on_it(text):
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text and tok.decode(np.array(ids)) == text


def test_unknown_characters_and_ids_are_clear_errors():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match="character 'z' is not in the tokenizer's vocabulary"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="token id 3 is out of range for a vocabulary of 3"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="sorted and distinct"):
        CharTokenizer("ba")


def test_it_saves_and_loads_like_the_other_tokenizers(tmp_path):
    tok = CharTokenizer.train(CORPUS)
    assert isinstance(tok, Tokenizer) and KINDS["char"] is CharTokenizer
    tok.save(str(tmp_path / "tok"))
    again = load(str(tmp_path / "tok"))
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert again.encode(CORPUS[:200]) == tok.encode(CORPUS[:200])
    assert again.fingerprint() == tok.fingerprint() != CharTokenizer.train("xyz").fingerprint()


@pytest.mark.parametrize("kind", list(KINDS))
def test_data_builds_encodes_and_decodes_every_kind_alike(kind):
    tok = data.build_tokenizer(kind, CORPUS[:3000], 300)
    assert isinstance(tok, KINDS[kind])
    ids = data.encode(tok, "First Citizen:")
    assert ids.dtype == np.int64 and ids.ndim == 1
    text = data.decode(tok, ids)
    assert text.lower().replace(" ", "") == "firstcitizen:"      # wordpiece lowercases and spaces its words
