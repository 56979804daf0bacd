"""Text in, batches of token ids out.

- The built-in corpus, tiny Shakespeare (public domain, ~1 MB), ships gzipped inside the package,
  so the main job needs no download; `--data FILE` takes any UTF-8 text instead.
- A character tokenizer (the vocabulary is the set of characters in the text), or any of
  minillm.tokenizers (byte-level BPE, Unigram, WordPiece) trained on the text or loaded.
- Token ids are cached in a file next to the data and read back as a numpy.memmap, so a large
  corpus is tokenized once and never held in memory; the first 90% is train, the rest val.
"""
import gzip
import hashlib
import json
import os

import numpy as np

BUILTIN_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tinyshakespeare.txt.gz")


def read_text(path=None):
    """The text of a UTF-8 file (or the built-in corpus when path is None), with clear errors."""
    if path is None:
        with gzip.open(BUILTIN_CORPUS, "rb") as f:
            raw = f.read()
    else:
        if not os.path.isfile(path):
            raise ValueError(f"data file {path!r} does not exist")
        with open(path, "rb") as f:
            raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"data file {path!r} is not UTF-8 text (bad byte at offset {error.start})") from None
    if not text:
        raise ValueError(f"data file {path!r} is empty")
    return text


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters seen in training."""

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)   # sorted
        if np.any(np.diff(self.codepoints.astype(np.int64)) <= 0):
            raise ValueError("CharTokenizer: chars must be sorted and distinct")

    @classmethod
    def train(cls, text):
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        """str -> int array of ids; a character outside the vocabulary is an error."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self.codepoints, points)
        bad = (ids >= len(self.chars)) | (self.codepoints[np.minimum(ids, len(self.chars) - 1)] != points)
        if bad.any():
            raise ValueError(f"character {chr(points[bad][0])!r} is not in the tokenizer's vocabulary")
        return ids.astype(np.int64)

    def decode(self, ids):
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.chars)):
            raise ValueError(f"token id {int(ids[(ids < 0) | (ids >= len(self.chars))][0])} is outside the "
                             f"vocabulary [0, {len(self.chars)})")
        return "".join(self.chars[i] for i in ids.tolist())

    def to_dict(self):
        return {"kind": "char", "chars": "".join(self.chars)}

    def fingerprint(self):
        return hashlib.sha1(json.dumps(self.to_dict()).encode()).hexdigest()[:12]


TRAINABLE = ("char", "bpe", "unigram", "wordpiece")


def build_tokenizer(spec, text, vocab_size=None):
    """A tokenizer for training: "char" (the text's characters), "bpe" / "unigram" / "wordpiece"
    (trained on text to vocab_size tokens), or the path of a saved tokenizer, a .tiktoken rank
    file or a BERT vocab.txt (see minillm.tokenizers.load)."""
    if spec == "char":
        return CharTokenizer.train(text)
    from . import tokenizers
    if spec in tokenizers.KINDS:
        if not vocab_size:
            raise ValueError(f"a {spec} tokenizer needs a vocab size")
        return tokenizers.KINDS[spec].train(text, vocab_size)
    if os.path.exists(spec):
        return tokenizers.load(spec)
    raise ValueError(f"tokenizer must be one of {TRAINABLE} or the path of a saved tokenizer, got {spec!r}")


def encode(tokenizer, text):
    """Token ids of text as int64; a subword tokenizer treats special-token text as ordinary text."""
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.encode(text)
    return np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)


def decode(tokenizer, ids):
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.decode(ids)
    return tokenizer.decode([int(i) for i in ids], errors="replace")


def tokenizer_fingerprint(tokenizer):
    """A short hash that changes whenever the tokenizer would encode differently."""
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.fingerprint()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        h = hashlib.sha1()
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


def save_tokenizer(tokenizer, directory):
    """The tokenizer's entry for config.json; a subword tokenizer's files go to directory/tokenizer/."""
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.to_dict()
    tokenizer.save(os.path.join(directory, "tokenizer"))
    return {"kind": tokenizer.kind, "path": "tokenizer"}


def tokenizer_from_dict(d, directory=None):
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    if "path" in d and directory is not None:
        from . import tokenizers
        return tokenizers.load(os.path.join(directory, d["path"]))
    raise ValueError(f"unknown tokenizer kind {d.get('kind')!r}")


def cached_token_ids(text, tokenizer, source_path, cache_dir):
    """Token ids of text as a read-only memmap, tokenized once into a cache file.

    The cache file is named after the data file, its size and modification time, and the
    tokenizer, so a changed file or tokenizer makes a new cache. Written atomically.
    """
    if source_path is None:
        key, stem = "builtin", "tinyshakespeare"
    else:
        st = os.stat(source_path)
        key, stem = f"{os.path.abspath(source_path)}:{st.st_size}:{st.st_mtime_ns}", os.path.basename(source_path)
    digest = hashlib.sha1(f"{key}:{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest()[:12]
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32
    path = os.path.join(cache_dir, f"{stem}.{digest}.{np.dtype(dtype).name}.tokens")
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        ids = encode(tokenizer, text).astype(dtype)
        tmp = f"{path}.tmp{os.getpid()}"
        ids.tofile(tmp)
        os.replace(tmp, path)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenData:
    """Train/val token streams and random (x, y) batches: y is x shifted by one token."""

    def __init__(self, ids, val_fraction=0.1):
        n = len(ids)
        split = int(n * (1 - val_fraction))
        self.splits = {"train": ids[:split], "val": ids[split:]}

    def get_batch(self, split, batch_size, block_size, rng, rows=None):
        """x, y: (batch_size, block_size) int64, from random offsets drawn with rng.

        rows: a slice of the batch to return instead (a data-parallel rank's shard): the offsets of
        the whole batch are drawn all the same, so rng advances alike on every rank."""
        data = self.splits[split]
        if len(data) <= block_size:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than block_size + 1 "
                             f"({block_size + 1}); use more data or a smaller block_size")
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        if rows is not None:
            starts = starts[rows]
            if not len(starts):
                return np.empty((0, block_size), np.int64), np.empty((0, block_size), np.int64)
        x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([data[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
        return x, y
