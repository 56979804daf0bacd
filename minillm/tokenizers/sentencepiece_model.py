"""SentencePiece's .model file: a protobuf ModelProto (sentencepiece_model.proto), read and written
with minillm/tokenizers/protobuf.py.

    ModelProto       1: pieces (repeated SentencePiece)  2: trainer_spec  3: normalizer_spec
                     4: self_test_data  5: denormalizer_spec
    SentencePiece    1: piece (string)  2: score (float)  3: type (NORMAL 1, UNKNOWN 2, CONTROL 3,
                     USER_DEFINED 4, UNUSED 5, BYTE 6; default NORMAL)
    TrainerSpec      3: model_type (UNIGRAM 1, BPE 2, WORD 3, CHAR 4)  24: treat_whitespace_as_suffix
                     35: byte_fallback  40-43: unk_id, bos_id, eos_id, pad_id  44: unk_surface ...
    NormalizerSpec   1: name  2: precompiled_charsmap  3: add_dummy_prefix  4: remove_extra_whitespaces
                     5: escape_whitespaces  6: normalization_rule_tsv

Only the fields minillm reads are decoded; every field is kept as read, and write() puts back the
pieces (possibly changed) with the other fields' bytes untouched, so read then write gives the
same message.
"""
from dataclasses import dataclass, field

from .protobuf import BYTES, FIXED32, VARINT, ProtobufError, as_float, as_int32, encode_field, encode_fields, \
    float_bytes, read_fields

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

# TrainerSpec fields minillm reads: name -> (field number, default); proto2 defaults where unset
TRAINER_FIELDS = {"model_type": (3, 1), "vocab_size": (4, 8000), "split_by_whitespace": (22, True),
                  "treat_whitespace_as_suffix": (24, False), "byte_fallback": (35, False), "unk_id": (40, 0),
                  "bos_id": (41, 1), "eos_id": (42, 2), "pad_id": (43, -1), "unk_surface": (44, " \u2047 ")}
NORMALIZER_FIELDS = {"name": (1, ""), "precompiled_charsmap": (2, b""), "add_dummy_prefix": (3, True),
                     "remove_extra_whitespaces": (4, True), "escape_whitespaces": (5, True),
                     "normalization_rule_tsv": (6, "")}


@dataclass
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class ModelFile:
    pieces: list
    trainer: dict                    # the TRAINER_FIELDS, decoded
    normalizer: dict                 # the NORMALIZER_FIELDS, decoded
    fields: list = field(default_factory=list)   # every top-level field but the pieces, as read


def _decode(fields, known, where):
    """{name: value} of the known fields of a sub-message (its defaults where a field is absent)."""
    by_number = {}
    for number, wire, value in fields:
        by_number[number] = (wire, value)
    out = {}
    for name, (number, default) in known.items():
        if number not in by_number:
            out[name] = default
            continue
        wire, value = by_number[number]
        if isinstance(default, bool):
            out[name] = bool(value)
        elif isinstance(default, int):
            out[name] = as_int32(value)
        elif isinstance(default, bytes):
            out[name] = value
        else:
            try:
                out[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtobufError(f"{where}: field {name} is not UTF-8") from None
    return out


def read(data):
    """The ModelFile of a .model file's bytes; ProtobufError if they are not one."""
    pieces, rest = [], []
    trainer, normalizer = [], []
    for number, wire, value in read_fields(data):
        if number == 1 and wire == BYTES:
            p = Piece("")
            for n, w, v in read_fields(value):
                if n == 1 and w == BYTES:
                    p.piece = v.decode("utf-8")
                elif n == 2 and w == FIXED32:
                    p.score = as_float(v)
                elif n == 3 and w == VARINT:
                    p.type = v
            pieces.append(p)
            continue
        if number == 2 and wire == BYTES:
            trainer = read_fields(value)
        elif number == 3 and wire == BYTES:
            normalizer = read_fields(value)
        rest.append((number, wire, value))
    if not pieces:
        raise ProtobufError("the model has no pieces")
    return ModelFile(pieces, _decode(trainer, TRAINER_FIELDS, "trainer_spec"),
                     _decode(normalizer, NORMALIZER_FIELDS, "normalizer_spec"), rest)


def encode_piece(p):
    body = encode_field(1, BYTES, p.piece.encode("utf-8")) + encode_field(2, FIXED32, float_bytes(p.score))
    if p.type != NORMAL:
        body += encode_field(3, VARINT, p.type)
    return encode_field(1, BYTES, body)


def write(model):
    """The bytes of a ModelFile: its pieces, then its other fields as they were read (or made)."""
    return b"".join(encode_piece(p) for p in model.pieces) + encode_fields(sorted(model.fields, key=lambda f: f[0]))


def spec_bytes(values, known):
    """A TrainerSpec / NormalizerSpec message from {name: value} (for a model minillm makes)."""
    fields = []
    for name, value in values.items():
        number, default = known[name]
        if isinstance(default, bool) or isinstance(default, int):
            fields.append((number, VARINT, int(value)))
        else:
            fields.append((number, BYTES, value if isinstance(value, bytes) else value.encode("utf-8")))
    return encode_fields(sorted(fields))
