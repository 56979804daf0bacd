"""Text in, batches of token ids out.

- The built-in corpus, tiny Shakespeare (public domain, ~1 MB), ships gzipped inside the package,
  so the main job needs no download; `--data FILE` takes any UTF-8 text instead.
- Any tokenizer of minillm.tokenizers (characters, byte-level BPE, Unigram, WordPiece), trained on
  the text or loaded; they share one interface, so nothing here depends on which one it is.
- Token ids are cached in a file next to the data and read back as a numpy.memmap, so a large
  corpus is tokenized once and never held in memory; the first 90% is train, the rest val.
"""
import gzip
import hashlib
import os

import numpy as np

from . import tokenizers
from .config import check_fields
from .files import write_atomically
from .tokenizers import CharTokenizer   # also importable from here, its old home

BUILTIN_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tinyshakespeare.txt.gz")


def read_text(path=None):
    """The text of a UTF-8 file (or the built-in corpus when path is None), with clear errors."""
    if path is None:
        with gzip.open(BUILTIN_CORPUS, "rb") as f:
            raw = f.read()
    else:
        if not os.path.exists(path):
            raise ValueError(f"data file {path!r} does not exist")
        if not os.path.isfile(path):
            raise ValueError(f"data file {path!r} is not a regular file")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as error:
            raise ValueError(f"cannot read data file {path!r}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"data file {path!r} is not UTF-8 text (bad byte at offset {error.start})") from None
    if not text:
        raise ValueError(f"data file {path!r} is empty")
    return text


def build_tokenizer(spec, text, vocab_size=None):
    """A tokenizer for training: a kind of tokenizers.KINDS ("char": the text's characters; "bpe",
    "unigram", "wordpiece": trained on text to vocab_size tokens), or the path of a saved tokenizer,
    a .tiktoken rank file or a BERT vocab.txt (see minillm.tokenizers.load)."""
    if spec in tokenizers.KINDS:
        return tokenizers.KINDS[spec].train(text, vocab_size)
    if os.path.exists(spec):
        return tokenizers.load(spec)
    raise ValueError(f"tokenizer must be one of {tuple(tokenizers.KINDS)} or the path of a saved tokenizer, "
                     f"got {spec!r}")


def encode(tokenizer, text):
    """Token ids of text as int64; a subword tokenizer treats special-token text as ordinary text."""
    return np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)


def decode(tokenizer, ids):
    """The text of ids; bytes that are not UTF-8 (a multi-byte character cut by a subword split)
    become U+FFFD."""
    return tokenizer.decode([int(i) for i in ids], errors="replace")


TOKENIZER_DIR = "tokenizer"     # a checkpoint's tokenizer files: <checkpoint>/tokenizer/


def save_tokenizer(tokenizer, directory):
    """Save the tokenizer into directory/tokenizer/; returns its entry for config.json."""
    tokenizer.save(os.path.join(directory, TOKENIZER_DIR))
    return {"kind": tokenizer.kind, "path": TOKENIZER_DIR}


def tokenizer_from_dict(d, directory=None):
    """The tokenizer a config.json entry names: {"kind", "path"} (files under directory), or the
    {"kind": "char", "chars": ...} that checkpoints written before char tokenizers had files hold.
    The path must be a directory inside `directory` (a checkpoint does not reach out of itself)."""
    check_fields(d, {"kind": str, "path": str, "chars": str}, "tokenizer entry")
    if "path" in d and directory is not None:
        path = os.path.join(directory, d["path"])
        inside = os.path.realpath(path).startswith(os.path.realpath(directory) + os.sep)
        if os.path.isabs(d["path"]) or not inside:
            raise ValueError(f"tokenizer entry: path {d['path']!r} leads outside the checkpoint {directory!r}")
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer entry: path {d['path']!r} is not a directory in {directory!r}")
        return tokenizers.load(path)
    if d.get("kind") == "char" and "chars" in d:
        return CharTokenizer(d["chars"])
    raise ValueError(f"unknown tokenizer entry {d!r:.200}; expected {{'kind': ..., 'path': ...}}")


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
    digest = hashlib.sha1(f"{key}:{tokenizer.fingerprint()}".encode()).hexdigest()[:12]
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32
    path = os.path.join(cache_dir, f"{stem}.{digest}.{np.dtype(dtype).name}.tokens")
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        ids = encode(tokenizer, text).astype(dtype)
        write_atomically(path, ids.tofile)
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
