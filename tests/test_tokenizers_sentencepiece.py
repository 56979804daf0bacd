"""SentencePiece .model files: the protobuf reader and writer, the normaliser, and ids equal to the
sentencepiece library's on Unicode text, for a Unigram and a BPE model it trains here (with and
without byte fallback, with nmt_nfkc and identity normalisation). Skips without sentencepiece."""
import functools
import io

import pytest
from hypothesis import given, settings, strategies as st

from minillm import tokenizers
from minillm.tokenizers import protobuf, sentencepiece_model as spm_model
from minillm.tokenizers.sentencepiece import SentencePieceTokenizer

spm = pytest.importorskip("sentencepiece")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
    "Sphinx of black quartz, judge my vow.", "How vexingly quick daft zebras jump.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.", "Ça va? Très bien, merci.",
    "東京は日本の首都です。", "Numbers: 12345 and 3.14159, dates 2024-01-31.",
    "tabs\tand   many    spaces  ", "ＦＵＬＬＷＩＤＴＨ letters and ① circled digits",
] * 20
TEXTS = [
    "The quick brown fox", "  leading and   inner   spaces  ", "Über Ça 東京 日本",
    "unknown chars: ☃ 🎉 ∮ ß", "runs of unknowns ☃☃∮🎉x☃", "ＦＵＬＬＷＩＤＴＨ ① ﬁ ligature", "tabs\tand\nnewlines", "", " ",
    "a", "dozen liquor jugs, judge my vow; 3.14159!", "▁already▁escaped", "x" * 40,
    "sss ssss sssss LLL LLLLL",            # equal joins side by side: BPE takes the leftmost first
]


def train(model_type, byte_fallback=True, normalization="nmt_nfkc", vocab_size=420, **extra):
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out, model_type=model_type,
                                   vocab_size=vocab_size, byte_fallback=byte_fallback,
                                   normalization_rule_name=normalization, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2, **extra)
    return out.getvalue()


MODELS = {
    "unigram": dict(model_type="unigram"),
    "bpe": dict(model_type="bpe"),
    "unigram-no-byte-fallback": dict(model_type="unigram", byte_fallback=False),
    "bpe-no-byte-fallback": dict(model_type="bpe", byte_fallback=False),
    "unigram-identity": dict(model_type="unigram", normalization="identity"),
    "bpe-nfkc-keep-spaces": dict(model_type="bpe", normalization="nfkc", remove_extra_whitespaces=False),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_bytes(request):
    return train(**MODELS[request.param])


def test_ids_equal_sentencepiece_on_unicode_text(model_bytes):
    ref = spm.SentencePieceProcessor(model_proto=model_bytes)
    ours = SentencePieceTokenizer.from_bytes(model_bytes)
    assert ours.vocab_size == ref.get_piece_size()
    for text in TEXTS + CORPUS[:10]:
        assert ours.encode(text) == ref.encode(text), text


# text mixing what the models know, what NFKC rewrites, what they never saw, and whitespace of every kind
GENERATED = st.text(st.sampled_from(list("the quick brown fox  jumps.,!?0123 ÜberÇa東京日本") +
                                    list("\t\n\r\u3000 ▁☃🎉∮ßＦＵ①ﬁ\u0301é\x00") + ["\U0001f600"]), max_size=40)


@settings(max_examples=40)
@given(text=GENERATED)
def test_ids_equal_sentencepiece_on_generated_text(model_bytes, text):
    ours, ref = both(model_bytes)
    assert ours.encode(text) == ref.encode(text)


@functools.lru_cache(maxsize=8)
def both(model_bytes):
    return SentencePieceTokenizer.from_bytes(model_bytes), spm.SentencePieceProcessor(model_proto=model_bytes)


def test_decode_equals_sentencepiece(model_bytes):
    ref = spm.SentencePieceProcessor(model_proto=model_bytes)
    ours = SentencePieceTokenizer.from_bytes(model_bytes)
    for text in TEXTS:
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids), text
    ids = [ref.bos_id(), *ref.encode("a b"), ref.eos_id(), ref.unk_id()]
    assert ours.decode(ids) == ref.decode(ids)


def test_a_model_read_and_written_back_is_the_same_message(model_bytes):
    ours = SentencePieceTokenizer.from_bytes(model_bytes)
    again = ours.to_bytes()
    assert spm_model.read(again) == spm_model.read(model_bytes)
    pytest.importorskip("google.protobuf")           # sentencepiece's generated message classes need it
    from sentencepiece import sentencepiece_model_pb2 as pb2
    a, b = pb2.ModelProto(), pb2.ModelProto()
    a.ParseFromString(model_bytes)
    b.ParseFromString(again)
    assert a == b                                      # protobuf's own reader sees the same model
    ref = spm.SentencePieceProcessor(model_proto=again)
    assert [ref.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]


def test_the_reader_decodes_the_pieces_and_specs_as_protobuf_does(model_bytes):
    pytest.importorskip("google.protobuf")           # sentencepiece's generated message classes need it
    from sentencepiece import sentencepiece_model_pb2 as pb2
    proto = pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    ours = spm_model.read(model_bytes)
    assert [(p.piece, p.score, p.type) for p in ours.pieces] == [(p.piece, p.score, p.type) for p in proto.pieces]
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert ours.trainer["model_type"] == t.model_type and ours.trainer["byte_fallback"] == t.byte_fallback
    assert (ours.trainer["unk_id"], ours.trainer["bos_id"], ours.trainer["eos_id"], ours.trainer["pad_id"]) == \
        (t.unk_id, t.bos_id, t.eos_id, t.pad_id)
    assert ours.normalizer["name"] == n.name and ours.normalizer["precompiled_charsmap"] == n.precompiled_charsmap
    assert ours.normalizer["remove_extra_whitespaces"] == n.remove_extra_whitespaces


def test_save_and_load_through_minillm_tokenizers(tmp_path):
    data = train("unigram")
    ours = SentencePieceTokenizer.from_bytes(data)
    ours.save(str(tmp_path / "tok"))
    back = tokenizers.load(str(tmp_path / "tok"))
    assert isinstance(back, SentencePieceTokenizer) and back.encode(TEXTS[2]) == ours.encode(TEXTS[2])
    path = tmp_path / "x.model"
    path.write_bytes(data)
    assert tokenizers.load(str(path)).encode(TEXTS[3]) == ours.encode(TEXTS[3])


def test_protobuf_varints_round_trip_and_bad_bytes_are_refused():
    for value in (0, 1, 127, 128, 300, 2**31 - 1, 2**63 - 1):
        assert protobuf.read_varint(protobuf.encode_varint(value), 0) == (value, len(protobuf.encode_varint(value)))
    assert protobuf.as_int32(protobuf.read_varint(protobuf.encode_varint(-1), 0)[0]) == -1
    with pytest.raises(protobuf.ProtobufError):
        protobuf.read_fields(b"\x0a\x05ab")                      # 5 bytes announced, 2 there
    with pytest.raises(protobuf.ProtobufError):
        protobuf.read_fields(b"\x0b")                           # wire type 3 (groups)
    with pytest.raises(ValueError):
        SentencePieceTokenizer.from_bytes(b"\x12\x00")          # a trainer spec, no pieces
