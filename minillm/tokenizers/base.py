"""What every tokenizer shares: the special-token policy, batch encoding, the saved layout.

A saved tokenizer is a directory holding `minillm_tokenizer.json` (the kind and its settings)
and the vocabulary in its family's own format: tiktoken's rank file for BPE, a
SentencePiece-style `piece<TAB>score` file for Unigram, BERT's `vocab.txt` for WordPiece, so the
vocabulary also opens in the tools that made those formats.
"""
import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import regex

from ..config import check_fields, check_kind, read_config
from ..files import atomic_write, write_json

META = "minillm_tokenizer.json"


def check_vocab_size(kind, vocab_size):
    """A tokenizer trained to a size needs that size: an int."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ValueError(f"train: a {kind} tokenizer needs a vocab size (an int), got {vocab_size!r}")


def read_texts(texts):
    """A corpus as a list of str: one str, or any iterable of str (lines, documents, ...)."""
    out = [texts] if isinstance(texts, str) else list(texts)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"train: the corpus must be str or an iterable of str, got an item of type {type(t).__name__}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("train: the corpus holds a lone surrogate; it is not valid Unicode") from None
    return out


class Tokenizer:
    """The interface: encode/decode text, batch encoding, special tokens, save/load.

    Subclasses provide `kind` (their name in tokenizers.KINDS and in saved files), the classmethod
    `train(texts, vocab_size, ..., progress=None)`, `encode_ordinary(text)` (no special tokens),
    `decode_bytes(ids)`, `vocab_size`, `id_to_token`, `_save_vocab(directory)` and
    `_load(directory, meta)`. `special_tokens` maps each special token's text to its id.
    """
    kind = None

    def __init__(self, special_tokens=None):
        self.special_tokens = dict(special_tokens or {})
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        self._special_re = (regex.compile("|".join(regex.escape(s) for s in
                                                   sorted(self.special_tokens, key=len, reverse=True)))
                            if self.special_tokens else None)

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Token ids of text. Special tokens are encoded as themselves only when allowed.

        Like tiktoken: a special token in the text that is disallowed (by default every special
        token not allowed) raises ValueError; one neither allowed nor disallowed is encoded as
        ordinary text. Pass allowed_special="all" to allow every special token.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be str, got {type(text).__name__}")
        allowed = self._special_set(allowed_special, "allowed_special")
        self._refuse_disallowed(text, allowed, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for m in self._special_re.finditer(text):
            if m.group() in allowed:
                ids += self.encode_ordinary(text[start:m.start()])
                ids.append(self.special_tokens[m.group()])
                start = m.end()
        return ids + self.encode_ordinary(text[start:])

    def _refuse_disallowed(self, text, allowed, disallowed_special):
        disallowed = (set(self.special_tokens) - allowed if disallowed_special == "all"
                      else self._special_set(disallowed_special, "disallowed_special"))
        for s in disallowed:
            if s in text:
                raise ValueError(f"encode: the text contains the special token {s!r}, which is not allowed; pass "
                                 f"allowed_special={{{s!r}}} to encode it as a special token, or "
                                 f"disallowed_special=() to encode it as ordinary text")

    def _special_set(self, value, name):
        if value == "all":
            return set(self.special_tokens)
        value = {value} if isinstance(value, str) else set(value)
        unknown = value - set(self.special_tokens)
        if unknown:
            raise ValueError(f"encode: {name} names {sorted(unknown)}, which are not special tokens of this "
                             f"tokenizer (it has {sorted(self.special_tokens)})")
        return value

    def encode_batch(self, texts, num_threads=None, **kwargs):
        """encode() of each text, on a pool of threads (the native encoder releases the GIL)."""
        texts = list(texts)
        if num_threads == 1 or len(texts) < 2:
            return [self.encode(t, **kwargs) for t in texts]
        with ThreadPoolExecutor(max_workers=num_threads or os.cpu_count()) as pool:
            return list(pool.map(lambda t: self.encode(t, **kwargs), texts))

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, ids, errors="strict"):
        """The text of ids. Ids whose bytes are not valid UTF-8 raise ValueError unless
        errors="replace" (or another codec error handler) is given; decode_bytes() gives the bytes."""
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise ValueError(f"decode: the tokens' bytes are not valid UTF-8 at byte {e.start} "
                             f"({data[e.start:e.start + 4]!r}); use decode_bytes() for the raw bytes or "
                             f"decode(ids, errors='replace')") from None

    def _check_ids(self, ids):
        n = self.vocab_size
        for i in ids:
            if not isinstance(i, int) and not hasattr(i, "__index__"):
                raise TypeError(f"decode: token ids must be integers, got {type(i).__name__}")
            if not 0 <= i < n:
                raise ValueError(f"decode: token id {int(i)} is out of range for a vocabulary of {n}")

    # -- files ------------------------------------------------------------------------------

    def save(self, directory):
        """Write the vocabulary and minillm_tokenizer.json into directory (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        meta = {"kind": self.kind, "special_tokens": self.special_tokens, **self._save_vocab(directory)}
        write_json(os.path.join(directory, META), meta)
        return directory

    @classmethod
    def load(cls, directory):
        meta = read_meta(directory)
        if meta.get("kind") != cls.kind:
            raise ValueError(f"load: {directory} holds a {meta.get('kind')!r} tokenizer, not {cls.kind!r}")
        return cls._load(directory, meta)

    def fingerprint(self):
        """A short hash of the saved files, which changes whenever the tokenizer would encode differently."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            h = hashlib.sha1()
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    h.update(name.encode() + f.read())
        return h.hexdigest()[:12]

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={len(self.special_tokens)})"


META_SCHEMA = {"kind": str, "special_tokens": dict, "vocab": str}


def read_meta(directory):
    """minillm_tokenizer.json of a saved tokenizer, its common fields' types checked."""
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: {directory} has no {META}; is it a directory written by Tokenizer.save()?")
    meta = check_fields(read_config(path, "tokenizer"), META_SCHEMA, f"tokenizer file {path!r}")
    for token, i in meta.get("special_tokens", {}).items():
        check_kind(i, int, f"tokenizer file {path!r}: special_tokens[{token!r}]")
        if not token or i < 0:
            raise ValueError(f"tokenizer file {path!r}: special_tokens[{token!r}] must be a non-empty token with an "
                             f"id >= 0, got {i}")
    return meta


def meta_fields(directory, meta, schema):
    """meta (read_meta's) with a family's own fields checked against their kinds."""
    return check_fields(meta, schema, f"tokenizer file {os.path.join(directory, META)!r}")


def vocab_file(directory, meta, default):
    """The path of the vocabulary file meta names: a plain file name in directory, a regular file."""
    name = meta.get("vocab", default)
    if os.path.basename(name) != name or name in ("", ".", "..") or "\\" in name:
        raise ValueError(f"tokenizer file {os.path.join(directory, META)!r}: vocab must be a file name in the "
                         f"tokenizer's directory, got {name!r:.60}")
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer {directory!r}: its vocabulary file {name!r} is missing or not a regular file")
    return path


def check_unicode(text):
    """Refuse text holding a lone surrogate (not valid Unicode, so it has no UTF-8), as every
    tokenizer does, instead of dropping or mangling it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("encode: text is not valid Unicode (it holds a lone surrogate); "
                         "it cannot be encoded as UTF-8") from None
    return text
