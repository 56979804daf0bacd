"""Byte-level BPE by a merge list: the rule of Hugging Face's `tokenizers` and llama.cpp, for the
vocabularies of pretrained models (GGUF metadata, tokenizer.json).

minillm's BPETokenizer follows tiktoken: a pair of parts is joined when the joined *bytes* are a
token, in the order of the joined token's rank. A merge-list vocabulary says instead which *pairs*
join, in the order of the list:

    pre-tokens = split(text)                       (one or more regex stages, below)
    parts      = the pre-token's bytes, one token each
    repeat: among adjacent pairs (a, b) that are in the merge list, join the one with the lowest
            merge rank (the leftmost on a tie) into the token a + b; until no pair is in the list

The two rules agree on most text but not on all (a token that two different pairs could make, or
a pair whose bytes form a token the list never merges), so pretrained vocabularies use this one.
With ignore_merges (Llama 3's tokenizer) a pre-token that is itself a token is that token.

Pre-tokenization is a list of regex stages: each stage cuts every piece from the stage before into
its matches, keeping any text between matches as pieces too (Hugging Face's "Isolated" split,
llama.cpp's regex split). SmolLM2 is [r"\\p{N}", GPT-2's pattern]: every digit alone, then GPT-2's
rule on the rest.

Special tokens (control and user-defined tokens: <|im_start|>, <|endoftext|>, ...) are matched
in the text before any splitting when allowed (see Tokenizer.encode). Encoding runs in Python with
a cache of pre-token results; prompts of a few thousand tokens take milliseconds.
"""
import json
import os
from functools import lru_cache

import numpy as np
import regex

from .base import Tokenizer, atomic_write
from .bpe import PATTERNS, read_tiktoken, write_tiktoken

GPT2_PATTERN = PATTERNS["gpt2"]


def split_stages(text, stages):
    """text cut by each compiled regex in turn; the text between matches is kept as pieces."""
    pieces = [text]
    for stage in stages:
        out = []
        for piece in pieces:
            start = 0
            for m in stage.finditer(piece):
                if m.start() > start:
                    out.append(piece[start:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                start = m.end()
            if start < len(piece):
                out.append(piece[start:])
        pieces = out
    return pieces


def merge_by_list(piece, byte_ids, merge_ranks):
    """Token ids of one pre-token's bytes: join the adjacent pair of lowest merge rank (leftmost on
    a tie) until no adjacent pair is in merge_ranks. Keys and values are packed into one int each
    (a third of the memory of tuples, for ~50,000 merges): pair (a, b) is a << 32 | b, and its
    value rank << 32 | joined id, so comparing values compares ranks."""
    ids = [byte_ids[b] for b in piece if byte_ids[b] is not None]
    while len(ids) > 1:
        best, where = None, -1
        for i in range(len(ids) - 1):
            hit = merge_ranks.get(ids[i] << 32 | ids[i + 1])
            if hit is not None and (best is None or hit < best):
                best, where = hit, i
        if best is None:
            break
        ids[where:where + 2] = [best & 0xFFFFFFFF]
    return ids


class MergesBPETokenizer(Tokenizer):
    """Byte-level BPE over {token bytes: id} with an ordered merge list [(id_a, id_b), ...].

    ranks: the ordinary tokens {bytes: id}; special_tokens: {text: id}. merges: pairs of ids,
    highest priority first; each pair's joined bytes must be a token. stages: regex patterns applied
    in turn (default: GPT-2's). ignore_merges: see the module docstring. A byte that is no token of
    its own (some vocabularies lack a few control bytes) encodes as unk_token_id, or to nothing when
    that is None, as Hugging Face's BPE does. bos_token_id, eos_token_id, add_bos_token,
    chat_template: what a pretrained model's files say about them (saved and loaded with it).
    """
    kind = "bpe_merges"

    def __init__(self, ranks, merges, special_tokens=None, stages=(GPT2_PATTERN,), ignore_merges=False,
                 bos_token_id=None, eos_token_id=None, add_bos_token=False, chat_template=None, unk_token_id=None):
        super().__init__(special_tokens)
        self.ranks = dict(ranks)
        self._bytes = {i: t for t, i in self.ranks.items()}
        if len(self._bytes) != len(self.ranks):
            raise ValueError("MergesBPETokenizer: two tokens share an id; ids must be distinct")
        for s, i in self.special_tokens.items():
            if i in self._bytes:
                raise ValueError(f"MergesBPETokenizer: special token {s!r} has id {i}, which is already a token")
            self._bytes[i] = s.encode("utf-8")
        self._n = max(self._bytes) + 1 if self._bytes else 0
        self.stages = list(stages)
        self._stages = [regex.compile(p) for p in self.stages]
        self.ignore_merges = bool(ignore_merges)
        self.bos_token_id, self.eos_token_id, self.unk_token_id = bos_token_id, eos_token_id, unk_token_id
        self.add_bos_token, self.chat_template = bool(add_bos_token), chat_template
        every = {t: i for i, t in self._bytes.items()}         # ordinary and special tokens' bytes
        self.merges = np.array([(int(a), int(b)) for a, b in merges], dtype=np.int64).reshape(-1, 2)  # (M, 2)
        self._merge_ranks = {}
        for rank, (a, b) in enumerate(self.merges.tolist()):
            if a not in self._bytes or b not in self._bytes:
                raise ValueError(f"MergesBPETokenizer: merge {rank} ({a}, {b}) names an id that is not a token")
            joined = every.get(self._bytes[a] + self._bytes[b])
            if joined is None:
                raise ValueError(f"MergesBPETokenizer: merge {rank} joins {self._bytes[a]!r} and {self._bytes[b]!r}, "
                                 "whose bytes are not a token of the vocabulary")
            self._merge_ranks.setdefault(a << 32 | b, rank << 32 | joined)
        self._byte_ids = [self.ranks.get(bytes([b]), unk_token_id) for b in range(256)]
        self._piece = lru_cache(maxsize=65536)(self._encode_piece)

    @property
    def vocab_size(self):
        """One more than the largest id."""
        return self._n

    def token_to_bytes(self, token_id):
        if token_id not in self._bytes:
            raise ValueError(f"token_to_bytes: {token_id} is not a token id of this tokenizer")
        return self._bytes[token_id]

    id_to_token = token_to_bytes

    def decode_bytes(self, ids):
        try:
            return b"".join([self._bytes[i] for i in ids])
        except (KeyError, TypeError):
            self._check_ids(ids)
            raise ValueError("decode: an id is not a token of this tokenizer (a gap in the vocabulary)") from None

    def _encode_piece(self, piece):
        if self.ignore_merges and piece in self.ranks:
            return (self.ranks[piece],)
        return tuple(merge_by_list(piece, self._byte_ids, self._merge_ranks))

    def pre_tokenize(self, text):
        """The pre-tokens of text (str pieces), by the regex stages."""
        return split_stages(text, self._stages)

    def encode_ordinary(self, text):
        try:
            pieces = [p.encode("utf-8") for p in self.pre_tokenize(text)]
        except UnicodeEncodeError:
            raise ValueError("encode: text is not valid Unicode (it holds a lone surrogate); "
                             "it cannot be encoded as UTF-8") from None
        return [i for p in pieces for i in self._piece(p)]

    def encode_batch(self, texts, num_threads=None, **kwargs):
        return [self.encode(t, **kwargs) for t in texts]

    # -- files ------------------------------------------------------------------------------

    def _save_vocab(self, directory):
        write_tiktoken(os.path.join(directory, "vocab.tiktoken"), self.ranks)
        atomic_write(os.path.join(directory, "merges.txt"), "".join(f"{a} {b}\n" for a, b in self.merges.tolist()))
        return {"vocab": "vocab.tiktoken", "merges": "merges.txt", "stages": self.stages,
                "ignore_merges": self.ignore_merges, "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "add_bos_token": self.add_bos_token,
                "chat_template": self.chat_template, "unk_token_id": self.unk_token_id}

    @classmethod
    def _load(cls, directory, meta):
        with open(os.path.join(directory, meta.get("merges", "merges.txt")), encoding="utf-8") as f:
            merges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
        return cls(read_tiktoken(os.path.join(directory, meta.get("vocab", "vocab.tiktoken"))), merges,
                   meta.get("special_tokens"), meta.get("stages", [GPT2_PATTERN]), meta.get("ignore_merges", False),
                   meta.get("bos_token_id"), meta.get("eos_token_id"), meta.get("add_bos_token", False),
                   meta.get("chat_template"), meta.get("unk_token_id"))

    def __repr__(self):
        return (f"MergesBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)})")


def describe(tokenizer):
    """A one-line summary of a tokenizer for `minillm info`."""
    parts = [type(tokenizer).__name__, f"vocab {tokenizer.vocab_size}"]
    if isinstance(tokenizer, MergesBPETokenizer):
        parts.append(f"{len(tokenizer.merges)} merges, pre-tokenizer stages {json.dumps(tokenizer.stages)}")
    specials = getattr(tokenizer, "special_tokens", {})
    if specials:
        parts.append(f"{len(specials)} special tokens")
    return ", ".join(parts)
