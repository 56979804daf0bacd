"""Byte-level BPE: the C++ fast path equals the Python reference, exact round trips, GPT-2 ids,
tiktoken's files both ways, hand-worked merges, and clear errors on bad input."""
import os

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from minillm.tokenizers import BPETokenizer, load
from minillm.tokenizers.bpe import PATTERNS, count_words, native, read_tiktoken, train_merges_reference

HERE = os.path.dirname(__file__)
CORPUS = open(os.path.join(HERE, "data", "tinyshakespeare_head.txt"), encoding="utf-8").read()
# GPT-2's full rank file is not in the repository: set MINILLM_DATA_DIR to a folder holding gpt2.tiktoken
GPT2_FILE = os.path.join(os.environ.get("MINILLM_DATA_DIR", ""), "gpt2.tiktoken")
GPT2_SUBSET = os.path.join(HERE, "data", "gpt2_subset.tiktoken")   # GPT-2's tokens inside GPT2_IDS' pieces
EOT = {"<|endoftext|>": 50256}
needs_native = pytest.mark.skipif(native() is None, reason="minillm._C is not built or MINILLM_BACKEND=numpy")

# GPT-2's ids for these strings, from tiktoken's "gpt2" encoding.
GPT2_IDS = [
    ("Hello, world!", [15496, 11, 995, 0]),
    ("I'm here, you're there; we'll see. They've DONE it'S",
     [40, 1101, 994, 11, 345, 821, 612, 26, 356, 1183, 766, 13, 1119, 1053, 360, 11651, 340, 6, 50]),
    ("  multiple   spaces\n\n\tand tabs  ", [220, 3294, 220, 220, 9029, 628, 197, 392, 22524, 220, 220]),
    ("日本語のテキスト", [33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302]),
    ("emoji 🎉🦄 and ünïcödé",
     [368, 31370, 12520, 236, 231, 8582, 99, 226, 290, 6184, 120, 77, 26884, 66, 9101, 67, 2634]),
    ("numbers 12345 67.89 and 3.14159", [77, 17024, 17031, 2231, 8275, 13, 4531, 290, 513, 13, 1415, 19707]),
    ("The quick brown fox jumps over the lazy dog.", [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]),
    ("def encode(self, text):\n    return [self.ranks[b] for b in text]\n",
     [4299, 37773, 7, 944, 11, 2420, 2599, 198, 220, 220, 220, 1441, 685, 944, 13, 81, 2283, 58, 65, 60, 329, 275,
      287, 2420, 60, 198]),
    ("antidisestablishmentarianism unbelievably", [415, 29207, 44390, 3699, 1042, 48943]),
    ("First Citizen:\nBefore we proceed any further, hear me speak.",
     [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13]),
    (" \xa0non-breaking\u2003spaces", [220, 1849, 13159, 12, 13395, 447, 225, 2777, 2114]),
    ("Ελληνικά και русский текст",
     [138, 243, 39377, 39377, 138, 115, 26180, 29945, 43000, 138, 105, 7377, 118, 17394, 29945, 220, 21169, 35072,
      21727, 21727, 31583, 18849, 140, 117, 220, 20375, 16843, 31583, 21727, 20375]),
]

# Text that stresses the pre-tokenizer: contractions, space runs before words and at the end, odd spaces.
TRICKY = ["it's 'll 've 're 'd 'm 't 'S 'x ''s", "a  b   c\n\n d \t\te  ", "  ", " ", "x\u3000\u3000y \u00a0z",
          "99 bottles\u2028of\u0085beer", "", "'", " '", "??'s !!\n"]


@pytest.fixture(scope="module")
def trained():
    return {use: BPETokenizer.train(CORPUS, 600, use_native=use) for use in ([False, None] if native() else [False])}


@pytest.fixture(scope="module")
def gpt2_subset():
    return BPETokenizer.from_tiktoken(GPT2_SUBSET, EOT)


# ---- hand-worked ---------------------------------------------------------------------------

@pytest.mark.parametrize("use_native", [False, pytest.param(None, marks=needs_native)])
def test_training_on_aaabdaaabac_makes_the_merges_worked_by_hand(use_native):
    # counts: aa 4, ab 2, ... -> aa; then (aa, a) 2 and (a, b) 2 tie -> the lower pair (a, b); then (aa, ab) 2.
    tok = BPETokenizer.train("aaabdaaabac", 259, special_tokens=(), use_native=use_native)
    assert [tok.token_to_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    # encode joins the lowest rank first, leftmost on ties: aa, aa, ab, ab, aaab, aaab.
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]


def test_a_pair_whose_bytes_are_already_a_token_makes_no_second_token():
    # "ab" then "abc" (ab + c); then "xa" + "bc"... the word "a bc" path: with words "abc" x3 and
    # "xbc": (a,b) 3, (b,c) 4 -> bc; then (a,bc) 3 -> abc; (x,bc) 1 -> xbc.  Bytes stay distinct.
    tok = BPETokenizer.train(["abc abc abc xbc"], 300, special_tokens=(), use_native=False)
    tokens = [tok.token_to_bytes(i) for i in range(256, tok.vocab_size)]
    assert len(tokens) == len(set(tokens))
    assert tokens[0] == b"bc"


# ---- the native path equals the reference ----------------------------------------------------

@needs_native
@given(st.text() | st.sampled_from(TRICKY))
def test_native_pretokenizer_equals_the_gpt2_regex(text):
    assert native().bpe_gpt2_split(text) == regex.findall(PATTERNS["gpt2"], text)


@needs_native
def test_native_pretokenizer_equals_the_gpt2_regex_on_the_corpus():
    assert native().bpe_gpt2_split(CORPUS) == regex.findall(PATTERNS["gpt2"], CORPUS)


@needs_native
@given(text=st.text(max_size=300))
def test_native_encode_equals_the_reference(trained, text):
    tok = trained[None]
    assert tok.encode(text) == tok.encode_reference(text)


@needs_native
def test_native_training_equals_the_reference_on_the_corpus(trained):
    assert trained[None].ranks == trained[False].ranks


@needs_native
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=6).filter(lambda ts: any(ts)),
       extra=st.integers(0, 40))
def test_native_training_equals_the_reference_on_generated_text(texts, extra):
    probe = BPETokenizer({bytes([b]): b for b in range(256)}, use_native=False)
    words = count_words(texts, probe, [])
    assert native().bpe_train(list(words), list(words.values()), extra) == train_merges_reference(words, extra)


@pytest.fixture(scope="module")
def abc():
    return BPETokenizer.train(["abcab" * 40 + " " + "aabbcc" * 30 + " cabbage " + "  " * 50], 400, special_tokens=())


@needs_native
@given(word=st.text(alphabet="abc", min_size=129, max_size=600), spaces=st.integers(0, 400))
def test_native_encode_of_long_pre_tokens_equals_the_reference(abc, word, spaces):
    # Pre-tokens over 128 bytes take the O(n log n) heap path in C++.
    text = word + " " * spaces + "x"
    assert abc.encode(text) == abc.encode_reference(text)


# ---- round trips, determinism, batches ---------------------------------------------------------

@given(text=st.text())
def test_decode_encode_is_exact_on_any_unicode(trained, text):
    for tok in trained.values():
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", r"\S+|\s+"])
def test_every_pattern_round_trips_the_corpus(pattern):
    tok = BPETokenizer.train(CORPUS[:3000], 400, pattern=pattern)
    assert tok.decode(tok.encode(CORPUS)) == CORPUS
    assert tok.encode(CORPUS) == tok.encode_reference(CORPUS)


def test_training_is_deterministic_and_does_not_depend_on_document_order():
    docs = CORPUS.split("\n\n")
    a = BPETokenizer.train(docs, 500)
    assert a.ranks == BPETokenizer.train(docs, 500).ranks == BPETokenizer.train(docs[::-1], 500).ranks


def test_encode_batch_equals_encode_one_by_one(trained):
    docs = CORPUS.split("\n\n") + ["", "ünïcödé 🎉", "<|endoftext|>"]
    for tok in trained.values():
        for threads in (1, 2):
            assert tok.encode_batch(docs, num_threads=threads, disallowed_special=()) == \
                [tok.encode(d, disallowed_special=()) for d in docs]
        assert tok.encode_batch(docs, allowed_special="all") == [tok.encode(d, allowed_special="all") for d in docs]
        with pytest.raises(ValueError, match="not allowed"):
            tok.encode_batch(docs)


# ---- GPT-2 parity ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,ids", GPT2_IDS)
def test_gpt2_ids_from_the_committed_subset_of_its_ranks(gpt2_subset, text, ids):
    # Encoding a pre-token only looks up substrings of it, so GPT-2's tokens inside these pieces suffice.
    assert gpt2_subset.encode(text) == ids
    assert gpt2_subset.encode_reference(text) == ids
    assert gpt2_subset.decode(ids) == text


@pytest.fixture(scope="module")
def gpt2():
    if not os.path.exists(GPT2_FILE):
        pytest.skip(f"GPT-2's rank file is not at {GPT2_FILE} (set MINILLM_DATA_DIR)")
    return BPETokenizer.from_tiktoken(GPT2_FILE, EOT)


def test_gpt2_ids_from_the_full_rank_file(gpt2):
    assert gpt2.vocab_size == 50257
    for text, ids in GPT2_IDS:
        assert gpt2.encode(text) == ids
    assert gpt2.encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]
    assert load(GPT2_FILE).encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]


@given(text=st.text())
def test_gpt2_ids_equal_tiktoken_on_any_unicode(gpt2, text):
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding("gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=gpt2.ranks, special_tokens=EOT)
    assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())


def test_gpt2_ids_equal_tiktoken_on_the_corpus(gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding("gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=gpt2.ranks, special_tokens=EOT)
    assert gpt2.encode(CORPUS) == enc.encode_ordinary(CORPUS)
    assert gpt2.encode_reference(CORPUS[:2000]) == enc.encode_ordinary(CORPUS[:2000])


# ---- files -----------------------------------------------------------------------------------

def test_save_and_load_give_the_same_tokenizer(trained, tmp_path):
    tok = next(iter(trained.values()))
    tok.save(tmp_path / "tok")
    back = load(str(tmp_path / "tok"))
    assert back.ranks == tok.ranks and back.special_tokens == tok.special_tokens
    assert back.encode(CORPUS, allowed_special="all") == tok.encode(CORPUS, allowed_special="all")
    assert sorted(os.listdir(tmp_path / "tok")) == ["minillm_tokenizer.json", "vocab.tiktoken"]


def test_a_saved_vocabulary_loads_in_tiktoken_and_encodes_the_same(trained, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    tok = next(iter(trained.values()))
    tok.save(tmp_path)
    enc = tiktoken.Encoding("ours", pat_str=tok.pattern, special_tokens=tok.special_tokens,
                            mergeable_ranks=load_tiktoken_bpe(str(tmp_path / "vocab.tiktoken")))
    text = CORPUS + " ünïcödé 🎉 <|endoftext|>"
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_read_tiktoken_equals_tiktokens_own_reader():
    tiktoken_load = pytest.importorskip("tiktoken.load")
    assert read_tiktoken(GPT2_SUBSET) == tiktoken_load.load_tiktoken_bpe(GPT2_SUBSET)


# ---- special tokens and bad input ---------------------------------------------------------------

def test_special_tokens_follow_the_allowed_and_disallowed_policy(gpt2_subset):
    text = "Hello<|endoftext|>"
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'.*not allowed"):
        gpt2_subset.encode(text)
    assert gpt2_subset.encode(text, allowed_special={"<|endoftext|>"})[-1] == 50256
    as_text = gpt2_subset.encode(text, disallowed_special=())
    assert 50256 not in as_text and gpt2_subset.decode(as_text) == text
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2_subset.encode(text, allowed_special={"<|im_start|>"})


def test_decoding_invalid_utf8_raises_a_clear_error(gpt2_subset):
    ids = [gpt2_subset.ranks[b"\xc3"], gpt2_subset.ranks[b"!"]]   # the first byte of a 2-byte character, then "!"
    assert gpt2_subset.decode_bytes(ids) == b"\xc3!"
    with pytest.raises(ValueError, match="not valid UTF-8 at byte 0"):
        gpt2_subset.decode(ids)
    assert gpt2_subset.decode(ids, errors="replace") == "\ufffd!"


def test_decoding_an_unknown_id_raises(gpt2_subset):
    with pytest.raises(ValueError, match="out of range"):
        gpt2_subset.decode([15496, 10**6])
    with pytest.raises(ValueError, match="not a token"):
        gpt2_subset.decode([1234])   # a gap: not among the committed ranks


def test_training_errors_are_clear():
    with pytest.raises(ValueError, match="smaller than the 256 byte tokens"):
        BPETokenizer.train(CORPUS, 256)
    with pytest.raises(ValueError, match="corpus is empty"):
        BPETokenizer.train(["", "<|endoftext|>"], 300)
    with pytest.raises(TypeError, match="iterable of str"):
        BPETokenizer.train([b"bytes"], 300)


def test_text_with_a_lone_surrogate_is_refused():
    tok = BPETokenizer.from_tiktoken(GPT2_SUBSET)
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode_reference("a\ud800b")


def test_a_vocabulary_without_every_byte_is_refused():
    with pytest.raises(ValueError, match="single-byte tokens"):
        BPETokenizer({b"a": 0, b"b": 1})


@needs_native
def test_the_bindings_check_their_arguments():
    import numpy as np
    C = native()
    with pytest.raises(ValueError, match="uint8 array"):
        C.bpe_set_char_classes(np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="same length"):
        C.bpe_train([b"ab"], [1, 2], 3)
    with pytest.raises(ValueError, match="positive"):
        C.bpe_train([b"ab"], [0], 3)
    with pytest.raises(ValueError, match="all 256 bytes"):
        C.BPEEncoder({b"a": 0})


@pytest.mark.parametrize("use_native", [False, pytest.param(None, marks=needs_native)])
def test_training_reports_progress_up_to_the_number_of_merges(use_native):
    calls = []
    BPETokenizer.train(CORPUS, 1000, use_native=use_native, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (743, 743)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
