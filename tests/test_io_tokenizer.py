"""Tokenizers of pretrained models: minillm's merge-list BPE gives the ids of Hugging Face's
`tokenizers` on the same vocabulary (SmolLM2's from its GGUF when installed, and one trained here),
and survives save/load and the trips through tokenizer.json and GGUF metadata."""
import json

import pytest

from minillm.io.errors import FormatError
from minillm.io.tokenizer import (as_merges_tokenizer, gguf_tokenizer_fields, hf_tokenizer_files,
                                  tokenizer_from_gguf, tokenizer_from_hf)
from minillm.tokenizers import BPETokenizer, load
from minillm.tokenizers.merges import MergesBPETokenizer

from pretrained_models import smollm2_meta  # noqa: E402

hf_tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "Hello world!  How are   you?\n\n\tTabs  and trailing spaces   ",
    "1234567890 3.14159, 2024-01-01; 00042 x1y22z333 ١٢٣٤ ½ ² ⅷ 10,000,000",
    "Ünïcödé — “quotes” 日本語のテキスト 🤗🚀 👩‍👩‍👧 Ελληνικά עברית a\u00a0b\u2003c",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "control \x04\x05 bytes \x00 end", "a  1  b   22 c\n\n\n  333", "don't I'll we've  'S 'll",
]


@pytest.fixture(scope="module")
def smollm2():
    """(minillm's tokenizer, Hugging Face's) from the same GGUF tokens and merges."""
    pytest.importorskip("gguf")
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    meta = smollm2_meta()
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    hf = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                              [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]],
                              unk_token=tokens[meta["tokenizer.ggml.unknown_token_id"]]))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    return tokenizer_from_gguf(meta, "SmolLM2"), hf


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_equal_hugging_face_tokenizers(smollm2, text):
    ours, hf = smollm2
    ids = ours.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False).ids
    if "\x04" not in text:                                    # bytes without a token of their own become unk
        assert ours.decode(ids) == text


def test_smollm2_splits_every_digit(smollm2):
    ours, _ = smollm2
    assert len(ours.encode("1234567")) == 7 and ours.pre_tokenize("ab12") == ["ab", "1", "2"]


def test_smollm2_tokenizer_facts(smollm2):
    ours, _ = smollm2
    assert ours.vocab_size == 49152 and ours.eos_token_id == ours.special_tokens["<|im_end|>"]
    assert not ours.add_bos_token and "<|im_start|>" in ours.chat_template


@pytest.fixture(scope="module")
def trained():
    """A byte-level BPE trained by Hugging Face tokenizers with a digit splitter, as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [t * 3 for t in TEXTS] + ["the quick brown fox jumps over the lazy dog 42 times"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok, json.loads(tok.to_str())


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_json_ids_equal_hugging_face(trained, text):
    hf, data = trained
    ours = tokenizer_from_hf(data, "trained")
    assert ours.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False).ids


def test_written_tokenizer_json_loads_in_hugging_face_with_the_same_ids(trained):
    from tokenizers import Tokenizer
    ours = tokenizer_from_hf(trained[1], "trained")
    data, _ = hf_tokenizer_files(ours)
    again = Tokenizer.from_str(json.dumps(data))
    for text in TEXTS + ["a <|endoftext|> b<|endoftext|>"]:
        assert again.encode(text, add_special_tokens=False).ids == ours.encode(text, allowed_special="all")


def test_gguf_fields_and_save_load_round_trip(trained, tmp_path):
    ours = tokenizer_from_hf(trained[1], "trained")
    fields = gguf_tokenizer_fields(ours)
    back = tokenizer_from_gguf(fields, "fields")
    ours.save(str(tmp_path / "tok"))
    loaded = load(str(tmp_path / "tok"))
    assert isinstance(loaded, MergesBPETokenizer) and loaded.stages == ours.stages
    for text in TEXTS:
        ids = ours.encode(text, allowed_special="all")
        assert back.encode(text, allowed_special="all") == ids == loaded.encode(text, allowed_special="all")


def test_tiktoken_rule_bpe_becomes_a_merge_list_with_the_same_ids():
    corpus = "\n".join(TEXTS * 5)
    tiktoken_rule = BPETokenizer.train(corpus, vocab_size=400)
    merges = as_merges_tokenizer(tiktoken_rule)
    for text in TEXTS + [corpus]:
        text = text.replace("<|endoftext|>", "")
        assert merges.encode_ordinary(text) == tiktoken_rule.encode_ordinary(text)


def test_merges_that_do_not_match_the_tokens_are_one_clear_error(trained):
    data = json.loads(json.dumps(trained[1]))
    data["model"]["merges"].append(["Ġqu", "nonexistent"])
    with pytest.raises(FormatError, match="not in the vocabulary"):
        tokenizer_from_hf(data, "bad")
    meta = gguf_tokenizer_fields(tokenizer_from_hf(trained[1], "trained"))
    del meta["minillm.tokenizer.stages"]
    meta["tokenizer.ggml.pre"] = "made-up"
    with pytest.raises(FormatError, match="pre-tokenizer 'made-up' is not supported"):
        tokenizer_from_gguf(meta, "bad")
