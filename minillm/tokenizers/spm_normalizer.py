"""SentencePiece's normaliser: the character rules a .model file carries, and its whitespace rules.

The rules (nmt_nfkc: NFKC plus a few NMT fixes; nfkc; identity: none) are compiled into the
file's precompiled_charsmap:

    <uint32 size n, little-endian> <n bytes: a double-array trie (Darts), uint32 units>
    <the replacement strings, each ending with NUL>

The trie's keys are UTF-8 byte strings and each value the offset of its replacement. Normalising
walks the text's UTF-8 bytes: at each position the longest key that matches is replaced by its
string, and where none matches one character is copied (a malformed byte becomes U+FFFD).

Whitespace (each rule on when the model says so): spaces at the start are dropped, runs of spaces
become one, spaces at the end are dropped (remove_extra_whitespaces); "▁" (U+2581) is put in front
(add_dummy_prefix, or at the end with treat_whitespace_as_suffix); every space becomes "▁"
(escape_whitespaces). User-defined pieces are copied as they are, never normalised.

A Darts unit u holds: has_leaf = bit 8, value = u & (2^31 - 1) (a leaf), label = u & (2^31 | 0xFF),
offset = (u >> 10) << ((u & 2^9) >> 6); a step on byte c goes from node p to p ^ offset(unit(p)) ^ c,
and is taken when the unit there has label c.
"""
import struct

import numpy as np

SPACE = "\u2581"


class Trie:
    """The double-array trie of a precompiled charsmap (see the module docstring)."""

    def __init__(self, units):
        self.units = [int(u) for u in units]

    def longest_prefix(self, data, start):
        """(length, value) of the longest key that data[start:] starts with, or (0, 0)."""
        units, n = self.units, len(self.units)
        node = (units[0] >> 10) << ((units[0] & 512) >> 6)
        best = (0, 0)
        for i in range(start, len(data)):
            c = data[i]
            node ^= c
            if node >= n:
                break
            unit = units[node]
            if unit & 0x800000FF != c:
                break
            node ^= (unit >> 10) << ((unit & 512) >> 6)
            if (unit >> 8) & 1:
                best = (i + 1 - start, units[node] & 0x7FFFFFFF)
        return best


def read_charsmap(blob):
    """(Trie, replacement bytes) of a precompiled_charsmap, or (None, b"") when it is empty."""
    if not blob:
        return None, b""
    if len(blob) < 4:
        raise ValueError("precompiled_charsmap: truncated (no size)")
    (size,) = struct.unpack("<I", blob[:4])
    if size % 4 or 4 + size > len(blob):
        raise ValueError(f"precompiled_charsmap: a trie of {size} bytes does not fit {len(blob)} bytes")
    return Trie(np.frombuffer(blob[4:4 + size], dtype="<u4")), blob[4 + size:]


def _utf8_length(data, i):
    """The length of the UTF-8 character at data[i], or 0 if it is malformed."""
    b = data[i]
    n = 1 if b < 0x80 else 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
    if not n or i + n > len(data):
        return 0
    try:
        data[i:i + n].decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return n


class Normalizer:
    def __init__(self, charsmap=b"", add_dummy_prefix=True, remove_extra_whitespaces=True, escape_whitespaces=True,
                 treat_whitespace_as_suffix=False, user_defined=()):
        self.trie, self.replacements = read_charsmap(charsmap)
        self.add_dummy_prefix, self.remove_extra = add_dummy_prefix, remove_extra_whitespaces
        self.escape, self.suffix = escape_whitespaces, treat_whitespace_as_suffix
        self.user_defined = sorted((u.encode("utf-8") for u in user_defined), key=len, reverse=True)
        self._cache = {}

    def _prefix(self, data, i):
        """(replacement bytes, bytes consumed) at data[i]: a user-defined piece, a rule, or one character."""
        for u in self.user_defined:
            if data.startswith(u, i):
                return u, len(u)
        if self.trie is not None:
            length, value = self.trie.longest_prefix(data, i)
            if length:
                end = self.replacements.index(b"\0", value)
                return self.replacements[value:end], length
        n = _utf8_length(data, i)
        return (data[i:i + n], n) if n else ("\ufffd".encode("utf-8"), 1)

    def normalize(self, text):
        """The text the model segments (see the module docstring)."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        data, i, out = text.encode("utf-8"), 0, bytearray()
        space = SPACE.encode("utf-8") if self.escape else b" "
        if self.remove_extra:                                   # spaces at the start
            while i < len(data):
                piece, n = self._prefix(data, i)
                if piece != b" ":
                    break
                i += n
        if i == len(data):
            return ""
        if self.add_dummy_prefix and not self.suffix:
            out += space
        prev_space = self.remove_extra
        while i < len(data):
            piece, n = self._prefix(data, i)
            if prev_space and self.remove_extra:
                piece = piece.lstrip(b" ")
            if piece:
                out += piece.replace(b" ", space) if self.escape else piece
                prev_space = piece.endswith(b" ")
            i += n
            if not self.remove_extra:
                prev_space = False
        if self.remove_extra:                                   # spaces at the end
            while out.endswith(space):
                del out[-len(space):]
        if self.add_dummy_prefix and self.suffix:
            out += space
        result = out.decode("utf-8")
        if len(self._cache) < 100000:
            self._cache[text] = result
        return result
