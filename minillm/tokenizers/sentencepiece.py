"""SentencePiece .model files (T5's spiece.model, many Llama-family tokenizers): read, encode,
decode, write back. The ids are the file's: a piece's id is its place in the file.

    text --normalise (minillm/tokenizers/spm_normalizer.py)--> "▁Hello▁world"
         --segment (the file's model)--> pieces --> ids, unknown pieces as bytes or <unk>

Unigram: the most likely segmentation under the pieces' scores (log probabilities), by Viterbi
over the lattice of pieces (UnigramTokenizer's, native when built). A position where no piece of
one character starts gets an unknown node of one character scoring min(scores) - 10, as in
SentencePiece. BPE: start from characters and repeatedly join the adjacent pair whose join is a
piece with the highest score (the leftmost on a tie). Only NORMAL pieces take part: control
pieces (<s>, </s>, <pad>) never come from text, byte pieces only from byte fallback.

Unknown: a run of characters that are not pieces is one unknown piece, which with byte_fallback
becomes its UTF-8 bytes as <0xNN> pieces, else one <unk>. When no piece contains "▁" but at its start (at its end with
treat_whitespace_as_suffix), the text is segmented word by word, each word starting at a "▁",
which gives the same pieces and lets words be cached.

Decode: pieces joined, "▁" read as a space, byte pieces joined into UTF-8 (a malformed sequence
becomes U+FFFD), control pieces as nothing, <unk> as " ⁇ "; the first piece loses its leading "▁" (the dummy
prefix), and with remove_extra_whitespaces every piece does until some text has come out.
"""
import heapq
import os

from ..files import atomic_write
from . import sentencepiece_model as spm
from .base import Tokenizer
from .spm_normalizer import SPACE, Normalizer
from .unigram import UnigramTokenizer

MODEL_FILE = "tokenizer.model"


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model):
        """model: a sentencepiece_model.ModelFile (read with from_file / from_bytes)."""
        self.model = model
        self.model_type = spm.MODEL_TYPES.get(model.trainer["model_type"], "?")
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"SentencePieceTokenizer: model type {self.model_type!r} is not supported "
                             "(unigram and bpe are)")
        self.pieces = [p.piece for p in model.pieces]
        self.types = [p.type for p in model.pieces]
        self._id = {}
        for i, p in enumerate(self.pieces):
            self._id.setdefault(p, i)
        specials = {p.piece: i for i, p in enumerate(model.pieces) if p.type in (spm.CONTROL, spm.UNKNOWN,
                                                                              spm.USER_DEFINED)}
        super().__init__(specials)
        t = model.trainer
        self.byte_fallback, self.suffix = bool(t["byte_fallback"]), bool(t["treat_whitespace_as_suffix"])
        self.unk_id = next((i for i, ty in enumerate(self.types) if ty == spm.UNKNOWN), None)
        if self.unk_id is None:
            raise ValueError("SentencePieceTokenizer: the model has no unknown piece")
        self.bos_token_id = t["bos_id"] if t["bos_id"] >= 0 else None
        self.eos_token_id = t["eos_id"] if t["eos_id"] >= 0 else None
        self.pad_token_id = t["pad_id"] if t["pad_id"] >= 0 else None
        self.unk_surface = t["unk_surface"]
        self._bytes = {int(p[3:5], 16): i for i, (p, ty) in enumerate(zip(self.pieces, self.types)) if ty == spm.BYTE}
        n = model.normalizer
        user = [p for p, ty in zip(self.pieces, self.types) if ty == spm.USER_DEFINED]
        self.normalizer = Normalizer(n["precompiled_charsmap"], n["add_dummy_prefix"], n["remove_extra_whitespaces"],
                                     n["escape_whitespaces"], self.suffix, user)
        self.add_dummy_prefix = n["add_dummy_prefix"]
        self.remove_extra = n["remove_extra_whitespaces"] and not self.suffix
        normal = [i for i, ty in enumerate(self.types) if ty == spm.NORMAL]
        self._normal = {self.pieces[i]: i for i in normal}
        self._user = {p: self._id[p] for p in user}
        inner = [self.pieces[i] for i in normal if SPACE in (self.pieces[i][1:] if not self.suffix
                                                             else self.pieces[i][:-1])]
        self.by_word = not inner                   # no piece spans a word boundary: segment word by word
        self._cache = {}
        if self.model_type == "unigram":
            self._lattice = UnigramTokenizer([(self.pieces[i], model.pieces[i].score) for i in normal], special_tokens=(),
                                             max_piece_len=max([len(self.pieces[i]) for i in normal] or [1]))
            self._lattice_ids = normal
        else:
            self._score = {self.pieces[i]: model.pieces[i].score for i in normal}

    # -- files ------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data):
        return cls(spm.read(data))

    @classmethod
    def from_file(cls, path):
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    def to_bytes(self):
        return spm.write(self.model)

    def save_model(self, path):
        """Write the .model file (sentencepiece loads it)."""
        return atomic_write(path, self.to_bytes())

    def _save_vocab(self, directory):
        self.save_model(os.path.join(directory, MODEL_FILE))
        return {"model": MODEL_FILE}

    @classmethod
    def _load(cls, directory, meta):
        return cls.from_file(os.path.join(directory, meta.get("model", MODEL_FILE)))

    # -- the vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self):
        return len(self.pieces)

    def id_to_token(self, token_id):
        return self.pieces[token_id]

    def piece_to_id(self, piece):
        return self._id.get(piece, self.unk_id)

    # -- encoding ---------------------------------------------------------------------------

    def encode_ordinary(self, text):
        """Ids of text: normalised, segmented, unknown pieces as bytes or <unk> (see the docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be str, got {type(text).__name__}")
        normalized = self.normalizer.normalize(text)
        ids = []
        for chunk, user in self._split_user(normalized):
            if user:
                ids.append(self._user[chunk])
            else:
                for word in (self._words(chunk) if self.by_word else [chunk]):
                    ids += self._word_ids(word)
        return ids

    def _split_user(self, text):
        """text cut around user-defined pieces (kept whole): [(chunk, is_user_piece)]."""
        if not self._user:
            return [(text, False)] if text else []
        out, start, i = [], 0, 0
        order = sorted(self._user, key=len, reverse=True)
        while i < len(text):
            hit = next((u for u in order if text.startswith(u, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append((text[start:i], False))
            out.append((hit, True))
            i = start = i + len(hit)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _words(self, text):
        """text cut before each "▁" (after each, with treat_whitespace_as_suffix)."""
        words, start = [], 0
        for i, ch in enumerate(text):
            if ch == SPACE:
                if not self.suffix and i > start:
                    words.append(text[start:i])
                    start = i
                elif self.suffix:
                    words.append(text[start:i + 1])
                    start = i + 1
        if start < len(text):
            words.append(text[start:])
        return words

    def _word_ids(self, word):
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        pieces = self._unigram(word) if self.model_type == "unigram" else self._bpe(word)
        ids = []
        for piece, i in pieces:
            if i is not None:
                ids.append(i)
            elif self.byte_fallback and self._bytes:
                ids += [self._bytes[b] for b in piece.encode("utf-8")]
            else:
                ids.append(self.unk_id)
        if len(self._cache) < 100000:
            self._cache[word] = ids
        return ids

    def _unigram(self, word):
        """[(piece, id or None)] of the Viterbi path; consecutive unknown characters form one piece."""
        out, at = [], 0
        for k in self._lattice.viterbi_paths([word])[0]:
            if k is None:
                if out and out[-1][1] is None:
                    out[-1] = (out[-1][0] + word[at], None)
                else:
                    out.append((word[at], None))
                at += 1
            else:
                piece = self._lattice.pieces[k][0]
                out.append((piece, self._lattice_ids[k]))
                at += len(piece)
        return out

    def _bpe(self, word):
        """[(piece, id or None)] after joining, best score first, the adjacent pairs that are pieces;
        consecutive unknown symbols form one piece."""
        symbols = list(word)
        alive = [True] * len(symbols)
        nxt, prv = list(range(1, len(symbols))) + [-1], list(range(-1, len(symbols) - 1))
        heap = []

        def push(left):
            right = nxt[left]
            if right < 0:
                return
            joined = symbols[left] + symbols[right]
            if joined in self._score:
                heapq.heappush(heap, (-self._score[joined], left, right, joined))

        for i in range(len(symbols) - 1):
            push(i)
        while heap:
            _, left, right, joined = heapq.heappop(heap)
            if not (alive[left] and alive[right] and nxt[left] == right and symbols[left] + symbols[right] == joined):
                continue                                            # stale: a side was joined since
            symbols[left], alive[right] = joined, False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            if prv[left] >= 0:
                push(prv[left])
            push(left)
        out = []
        for s in (s for s, a in zip(symbols, alive) if a):
            i = self._normal.get(s)
            if i is None and out and out[-1][1] is None:             # unknown runs are one piece
                out[-1] = (out[-1][0] + s, None)
            else:
                out.append((s, i))
        return out

    # -- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """UTF-8 bytes of ids (see the module docstring)."""
        self._check_ids(ids)
        out, pending, first, stripped = bytearray(), bytearray(), True, self.suffix
        for i in ids:
            ty = self.types[i]
            if ty == spm.BYTE:
                pending.append(int(self.pieces[i][3:5], 16))
                continue
            if pending:
                out += bytes(pending).decode("utf-8", errors="replace").encode("utf-8")
                pending.clear()
                first = not out
            if ty == spm.CONTROL:
                continue
            text = self.unk_surface if ty == spm.UNKNOWN else self.pieces[i]
            if first and text.startswith(SPACE) and (self.remove_extra or (self.add_dummy_prefix and not stripped)):
                text, stripped = text[1:], True
            out += text.replace(SPACE, " ").encode("utf-8")
            first = not out
        if pending:
            out += bytes(pending).decode("utf-8", errors="replace").encode("utf-8")
        if self.add_dummy_prefix and self.suffix and out.endswith(b" "):
            del out[-1:]
        return bytes(out)
