"""The protobuf wire format, the little of it a SentencePiece .model file needs: reading a message
into its fields and writing fields back (https://protobuf.dev/programming-guides/encoding/).

A message is a sequence of fields, each a key varint (field_number << 3 | wire_type) and a value:
    wire type 0  varint: 7 bits a byte, low bits first, the high bit set on all but the last byte
    wire type 1  8 bytes (fixed64, double)        wire type 5  4 bytes (fixed32, float)
    wire type 2  a varint length, then that many bytes (strings, bytes, nested messages)
Unknown fields are kept as they were read, so a file read and written back loses nothing.
"""
import struct

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """The bytes are not a protobuf message (truncated, or a wire type this reader does not know)."""


def read_varint(data, pos):
    """(value, position after it) of the varint at data[pos]."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def encode_varint(value):
    """The varint bytes of a non-negative int (a negative int32/int64 is written as its 64-bit two's complement)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_fields(data):
    """[(field number, wire type, value)] of a message: an int for varints, bytes otherwise."""
    fields, pos = [], 0
    data = memoryview(data).tobytes() if not isinstance(data, bytes) else data
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = read_varint(data, pos)
        elif wire == BYTES:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError(f"field {number}: {length} bytes announced, {len(data) - pos} left")
            value, pos = data[pos:pos + length], pos + length
        elif wire in (FIXED32, FIXED64):
            size = 4 if wire == FIXED32 else 8
            if pos + size > len(data):
                raise ProtobufError(f"field {number}: truncated fixed-size value")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ProtobufError(f"field {number}: wire type {wire} is not supported")
        fields.append((number, wire, value))
    return fields


def encode_field(number, wire, value):
    """The bytes of one field (value: an int for varints, bytes otherwise)."""
    key = encode_varint(number << 3 | wire)
    if wire == VARINT:
        return key + encode_varint(int(value))
    if wire == BYTES:
        return key + encode_varint(len(value)) + bytes(value)
    return key + bytes(value)


def encode_fields(fields):
    return b"".join(encode_field(n, w, v) for n, w, v in fields)


def as_float(value):
    """A fixed32 field's bytes as a float (protobuf's float: little-endian IEEE single)."""
    return struct.unpack("<f", value)[0]


def float_bytes(x):
    return struct.pack("<f", x)


def as_int32(value):
    """A varint read as a signed int32 / int64 (negative numbers are stored in 64-bit two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value
