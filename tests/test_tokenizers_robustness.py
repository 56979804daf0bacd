"""Tokenizers on hostile input: the Python BPE reference is n log n (a 100 KB run without spaces
in well under a few seconds) and equals both the plain rescan and the native encoder; every kind
refuses a lone surrogate the same way; a pre-tokenizer pattern that is not a regex, has capturing
groups or drops text is refused; a saved tokenizer's file names stay inside its directory."""
import json
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.tokenizers import KINDS, BPETokenizer, CharTokenizer, UnigramTokenizer, WordPieceTokenizer, load
from minillm.tokenizers.bpe import merge_piece_reference, merge_piece_rescan, native

HERE = os.path.dirname(__file__)
CORPUS = open(os.path.join(HERE, "data", "tinyshakespeare_head.txt"), encoding="utf-8").read()
needs_native = pytest.mark.skipif(native() is None, reason="minillm._C is not built or MINILLM_BACKEND=numpy")


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, 600)


@pytest.fixture(scope="module")
def reference(bpe):
    return BPETokenizer(bpe.ranks, bpe.special_tokens, use_native=False)


@given(piece=st.binary(max_size=60) | st.text(alphabet="aeiou thsrn,.'", max_size=60).map(str.encode))
def test_the_heap_merge_equals_the_plain_rescan(bpe, piece):
    assert merge_piece_reference(piece, bpe.ranks) == merge_piece_rescan(piece, bpe.ranks)


@needs_native
@given(text=st.text(max_size=200).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_the_reference_equals_the_native_encoder(bpe, reference, text):
    assert reference.encode_ordinary(text) == bpe.encode_ordinary(text)


def test_a_100_kb_run_without_spaces_is_fast_and_right(bpe, reference):
    run = ("thequickbrownfoxjumpsoverthelazydog" * 3000)[:100_000]
    start = time.perf_counter()
    ids = reference.encode_ordinary(run)
    seconds = time.perf_counter() - start
    assert reference.decode(ids) == run
    assert seconds < 5, f"100 KB without spaces took {seconds:.1f} s: the merge is not n log n"
    if native() is not None:
        assert ids == bpe.encode_ordinary(run)
    rescan_on = run[:2000]                                 # the same ids as the plain rescan, on what it can do
    assert reference.encode_ordinary(rescan_on) == merge_piece_rescan(rescan_on.encode(), bpe.ranks)


TRAINED = {
    "char": lambda: CharTokenizer.train(CORPUS),
    "bpe": lambda: BPETokenizer.train(CORPUS, 300),
    "bpe-reference": lambda: BPETokenizer.train(CORPUS, 300, use_native=False),
    "unigram": lambda: UnigramTokenizer.train(CORPUS, 400),
    "unigram-reference": lambda: UnigramTokenizer.train(CORPUS, 400, use_native=False),
    "wordpiece": lambda: WordPieceTokenizer.train(CORPUS, 300),
}


@pytest.mark.parametrize("kind", sorted(TRAINED))
def test_every_kind_refuses_a_lone_surrogate(kind):
    tok = TRAINED[kind]()
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("First \ud800 Citizen")
    with pytest.raises(ValueError, match="lone surrogate"):
        type(tok).train("First \udcff Citizen " * 20, 300)
    assert tok.decode(tok.encode("First Citizen")).lower().startswith("first")


def test_a_pattern_must_be_a_regex_without_groups_that_keeps_every_character(bpe):
    for pattern, message in (("[", "is not a valid regex"), (r"\w+", "drops text"), (r"(\w+)|\W+", "capturing"),
                             ("", "must be 'gpt2', 'cl100k' or a regex")):
        with pytest.raises(ValueError, match=message):
            BPETokenizer(bpe.ranks, pattern=pattern)
    own = BPETokenizer(bpe.ranks, pattern=r"\S+|\s+")                      # a pattern of one's own that keeps all
    assert own.decode(own.encode("a b\tc")) == "a b\tc"
    sly = BPETokenizer(bpe.ranks, pattern=r"[^\u2603]+", use_native=False)   # passes the probe, drops a snowman
    with pytest.raises(ValueError, match="drops part of the text"):
        sly.encode("a \u2603 b")


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_a_saved_tokenizer_names_only_files_in_its_own_directory(tmp_path, kind):
    tok = KINDS[kind].train(CORPUS, 400)
    directory = tmp_path / "tok"
    tok.save(str(directory))
    meta_path = directory / "minillm_tokenizer.json"
    meta = json.loads(meta_path.read_text())
    for name in (os.path.join("..", "outside"), os.path.abspath(os.sep), "."):
        meta_path.write_text(json.dumps({**meta, "vocab": name}))
        with pytest.raises(ValueError, match="vocab must be a file name in the tokenizer's directory"):
            load(str(directory))
    meta_path.write_text(json.dumps({**meta, "vocab": "gone.txt"}))
    with pytest.raises(ValueError, match="its vocabulary file 'gone.txt' is missing"):
        load(str(directory))
