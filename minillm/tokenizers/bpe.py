"""Byte-level BPE, GPT-2 compatible: train, encode, decode, and tiktoken's rank files.

The vocabulary is a table {token bytes: rank}; the rank is also the token's id. The 256 single
bytes are always tokens, so any text round-trips exactly.

Encode (tiktoken's rule, which is what makes GPT-2's ranks give GPT-2's ids): split the text
into pre-tokens with a regex (GPT-2's or cl100k's pattern), then inside each pre-token start
from single bytes and repeatedly join the adjacent pair whose joined bytes have the lowest rank
(the leftmost on a tie), until no joined pair is a token.

Train (minbpe's loop over pre-token counts): count pre-tokens once; then, vocab_size - 256
times, join the most frequent adjacent pair of ids everywhere (ties: lowest (a, b)), which makes
a new token. If the joined bytes are already a token (two paths to the same bytes), the pair is
joined into that token and no new one is made, so every token's bytes are distinct.

The functions named *_reference below are the readable definitions; csrc/tokenizers/bpe.cpp does the
same faster, and the tests hold the two equal.
"""
import base64
import heapq
import os
from collections import Counter

import numpy as np
import regex

from ..files import atomic_write
from .base import Tokenizer, check_vocab_size, meta_fields, read_texts, vocab_file

PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}
ENDOFTEXT = "<|endoftext|>"
_native_module = None


def native():
    """minillm._C ready for BPE (its pre-tokenizer's character classes set), or None when the
    extension is not built or MINILLM_BACKEND=numpy picks the references."""
    global _native_module
    from .. import kernels
    if not kernels.native.AVAILABLE or kernels.get_backend() != "native":
        return None
    if _native_module is None:
        C = kernels.native._C
        C.bpe_set_char_classes(char_classes())
        _native_module = C
    return _native_module


def char_classes():
    """The class of every code point as `regex` sees it: 1 = \\p{L}, 2 = \\p{N}, 3 = \\s, 0 = other."""
    every = "".join(map(chr, range(0x110000)))
    table = np.zeros(0x110000, np.uint8)
    for cls, pattern in ((1, r"\p{L}+"), (2, r"\p{N}+"), (3, r"\s+")):
        for m in regex.finditer(pattern, every):
            table[m.start():m.end()] = cls
    return table


# ---- the reference algorithms ------------------------------------------------------------

def merge_piece_reference(piece, ranks):
    """Ids of one pre-token's bytes: join the lowest-ranked adjacent pair (the leftmost on a tie)
    until no adjacent pair is a token.

    The parts are a linked list (start offset -> end offset) and the candidate pairs a heap keyed
    (rank, start of the left part), so each join costs O(log n) instead of a rescan of the whole
    piece: n log n for a pre-token of n bytes (a 100 KB run without spaces is one pre-token). A
    heap entry goes stale when either part has changed since it was pushed; it is then skipped.
    """
    n = len(piece)
    if n <= 1:
        return [ranks[piece]] if n else []
    end = list(range(1, n + 1))        # end[s]: where the part starting at s ends (parts: piece[s:end[s]])
    prev = list(range(-1, n - 1))      # prev[s]: start of the part before the one at s (-1: none)
    heap = []

    def push(s):                       # the pair of the part at s and the part after it, if a token
        e = end[s]
        if e < n:
            rank = ranks.get(piece[s:end[e]])
            if rank is not None:
                heapq.heappush(heap, (rank, s, e, end[e]))

    for s in range(n - 1):
        push(s)
    while heap:
        rank, s, e, e2 = heapq.heappop(heap)
        if end[s] != e or end[e] != e2 or prev[e] != s:     # stale: a part changed since the push
            continue
        end[s] = e2                    # join the parts [s, e) and [e, e2)
        prev[e] = -2                   # e no longer starts a part
        if e2 < n:
            prev[e2] = s
        push(s)
        if prev[s] >= 0:
            push(prev[s])
    ids, s = [], 0
    while s < n:
        ids.append(ranks[piece[s:end[s]]])
        s = end[s]
    return ids


def merge_piece_rescan(piece, ranks):
    """The same as merge_piece_reference, the plain way: rescan every pair before each join
    (quadratic in the length of the piece; kept to hold the heap version to it in the tests)."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        pair_ranks = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
        candidates = [(r, i) for i, r in enumerate(pair_ranks) if r is not None]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def train_merges_reference(word_counts, n_merges):
    """Merges [(a, b), ...] creating ids 256, 257, ... from {word bytes: count}, recounting
    every pair before each merge (clear and slow; csrc/tokenizers/bpe_train.cpp updates the counts instead)."""
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    vocab = [bytes([b]) for b in range(256)]
    ids = {b: i for i, b in enumerate(vocab)}
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for w, f in zip(words, freqs):
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        a, b = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        joined = vocab[a] + vocab[b]
        if joined not in ids:
            ids[joined] = len(vocab)
            vocab.append(joined)
            merges.append((a, b))
        words = [merge_ids(w, a, b, ids[joined]) for w in words]
    return merges


def merge_ids(ids, a, b, new):
    """ids with every non-overlapping (a, b), left to right, replaced by new."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---- tiktoken's rank files ----------------------------------------------------------------

MAX_RANK = 1 << 24       # ranks (ids) must be below this: 16.7M, far above any real vocabulary


def read_tiktoken(path):
    """{token bytes: rank} from a tiktoken rank file (one `base64(token) rank` per line). A line
    that is not that, a rank outside [0, 2**24) or a token given twice raises ValueError naming
    the line."""
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                token, rank = base64.b64decode(token, validate=True), int(rank)
            except ValueError:
                raise ValueError(f"read_tiktoken: {path}:{n} is not `base64-token rank`: {line[:60]!r}") from None
            if not 0 <= rank < MAX_RANK:
                raise ValueError(f"read_tiktoken: {path}:{n}: rank {rank} is out of range [0, {MAX_RANK})")
            if token in ranks:
                raise ValueError(f"read_tiktoken: {path}:{n}: token {token!r:.40} is given twice")
            ranks[token] = rank
    return ranks


# a text with every kind of character a pre-tokenizer must keep (letters, digits, punctuation,
# spaces of every sort, accents, CJK, emoji, apostrophes): a pattern must give it back whole
PROBE = ("Hello, World! It's 2024: 3.14 + x=y_z-w/v\\u ''s  \t\r\n\n  "
         "\u00fcml\u00e4ut caf\u00e9 \u4e2d\u6587 \U0001f642\u00a0\u2028 (a)[b]{c} \"q\" #$%&*;<>?@^`|~ \x00\x7f end ")


def check_pattern(pattern):
    """The compiled pre-tokenizer pattern, or ValueError if it is not a regex, has capturing groups
    (findall would return the groups) or drops text (its pieces must join back to the text)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"BPETokenizer: pattern must be 'gpt2', 'cl100k' or a regex string, got {pattern!r:.60}")
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"BPETokenizer: pattern {pattern!r:.60} is not a valid regex: {error}") from None
    if compiled.groups:
        raise ValueError(f"BPETokenizer: pattern {pattern!r:.60} has capturing groups; write (?:...) instead")
    joined = "".join(compiled.findall(PROBE))
    if joined != PROBE:
        raise ValueError(f"BPETokenizer: pattern {pattern!r:.60} drops text (its pieces of {PROBE[:20]!r}... do not "
                         "join back to it); a pre-tokenizer must match every character, as GPT-2's ends in \\s+")
    return compiled


def write_tiktoken(path, ranks):
    atomic_write(path, b"".join(base64.b64encode(t) + b" %d\n" % r
                                for t, r in sorted(ranks.items(), key=lambda kv: kv[1])))


# ---- the tokenizer ------------------------------------------------------------------------

class BPETokenizer(Tokenizer):
    """Byte-level BPE over a {token bytes: rank} table, with special tokens after the ranks.

    pattern: "gpt2", "cl100k" or a regex string for pre-tokenization. use_native: None picks
    the C++ encoder when available; False forces the Python reference.
    """
    kind = "bpe"

    def __init__(self, ranks, special_tokens=None, pattern="gpt2", use_native=None):
        super().__init__(special_tokens)
        self.ranks = dict(ranks)
        self.pattern_name = pattern if pattern in PATTERNS else None
        self.pattern = PATTERNS.get(pattern, pattern)
        self._split = check_pattern(self.pattern)
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise ValueError(f"BPETokenizer: the ranks lack single-byte tokens for {len(missing)} bytes "
                             f"(e.g. {missing[:4]}); byte-level BPE needs all 256")
        self._bytes = {r: t for t, r in self.ranks.items()}
        if len(self._bytes) != len(self.ranks):
            raise ValueError("BPETokenizer: two tokens share a rank; ranks must be distinct")
        for s, i in self.special_tokens.items():
            if i in self._bytes:
                raise ValueError(f"BPETokenizer: special token {s!r} has id {i}, which is already a rank")
            self._bytes[i] = s.encode("utf-8")
        self._n = max(self._bytes) + 1
        C = native() if use_native in (None, True) else None
        if use_native and C is None:
            raise RuntimeError("BPETokenizer: use_native=True but the native extension is not in use")
        self._native = C.BPEEncoder(self.ranks) if C is not None else None

    @property
    def vocab_size(self):
        """One more than the largest id (ranks and special tokens)."""
        return self._n

    def token_to_bytes(self, token_id):
        if token_id not in self._bytes:
            raise ValueError(f"token_to_bytes: {token_id} is not a token id of this tokenizer")
        return self._bytes[token_id]

    def id_to_token(self, token_id):
        return self.token_to_bytes(token_id)

    def encode_ordinary(self, text):
        """Ids of text with no special-token handling (special tokens' text is ordinary text)."""
        if self._native is not None:
            if self.pattern_name == "gpt2":
                return self._native.encode_gpt2(text)
            return self._native.encode_pieces(self._pieces(text))
        return self.encode_reference(text)

    def _pieces(self, text):
        """The pre-tokens of text; a pattern of one's own that skips part of this text is an error."""
        pieces = self._split.findall(text)
        if self.pattern_name is None and sum(map(len, pieces)) != len(text):
            raise ValueError(f"encode: the pre-tokenizer pattern {self.pattern!r:.60} drops part of the text, "
                             "which would be lost; fix the pattern")
        return pieces

    def encode_batch(self, texts, num_threads=None, allowed_special=frozenset(), disallowed_special="all"):
        """encode() of each text; with GPT-2's pattern and no special tokens allowed, in C++ on
        num_threads OpenMP threads (default: all cores), else on a thread pool."""
        texts = list(texts)
        if self._native is None or self.pattern_name != "gpt2" or allowed_special:
            return super().encode_batch(texts, num_threads, allowed_special=allowed_special,
                                        disallowed_special=disallowed_special)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch: texts must be str, got {type(t).__name__}")
            self._refuse_disallowed(t, set(), disallowed_special)
        return self._native.encode_gpt2_batch(texts, num_threads or os.cpu_count() or 1)

    def encode_reference(self, text):
        try:
            pieces = [p.encode("utf-8") for p in self._pieces(text)]
        except UnicodeEncodeError:
            raise ValueError("encode: text is not valid Unicode (it holds a lone surrogate); "
                             "it cannot be encoded as UTF-8") from None
        return [i for p in pieces for i in merge_piece_reference(p, self.ranks)]

    def decode_bytes(self, ids):
        """The bytes of ids joined (special tokens as their UTF-8 text)."""
        try:
            return b"".join([self._bytes[i] for i in ids])
        except (KeyError, TypeError):
            self._check_ids(ids)
            raise ValueError("decode: an id is not a token of this tokenizer (a gap between ranks)") from None

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, texts, vocab_size, pattern="gpt2", special_tokens=(ENDOFTEXT,), use_native=None, progress=None):
        """Learn up to vocab_size - 256 - len(special_tokens) merges (fewer if the corpus runs out
        of pairs) from texts: a str, or any iterable of str (a list of documents, an open file).

        Special tokens' text in the corpus is cut out, never merged. progress: a callable
        progress(n_merges_done, n_merges_total), called now and then.
        """
        check_vocab_size("bpe", vocab_size)
        special_tokens = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens or ())
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"train: vocab_size={vocab_size} is smaller than the 256 byte tokens plus "
                             f"{len(special_tokens)} special tokens; use vocab_size >= {256 + len(special_tokens)}")
        probe = cls({bytes([b]): b for b in range(256)}, pattern=pattern, use_native=use_native)
        words = count_words(read_texts(texts), probe, special_tokens)
        if not words:
            raise ValueError("train: the corpus is empty (no text outside special tokens)")
        report = (lambda done: progress(done, n_merges)) if progress else None
        if probe._native is not None:
            merges = native().bpe_train(words=list(words), counts=list(words.values()), n_merges=n_merges,
                                        progress=report)
        else:
            merges = train_merges_reference(words, n_merges)
        if progress:
            progress(n_merges, n_merges)
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        ranks = {t: i for i, t in enumerate(vocab)}
        return cls(ranks, {s: len(vocab) + k for k, s in enumerate(special_tokens)}, pattern, use_native)

    # -- files ------------------------------------------------------------------------------

    def _save_vocab(self, directory):
        write_tiktoken(os.path.join(directory, "vocab.tiktoken"), self.ranks)
        return {"vocab": "vocab.tiktoken", "pattern": self.pattern_name or self.pattern}

    @classmethod
    def _load(cls, directory, meta):
        meta_fields(directory, meta, {"pattern": str})
        return cls(read_tiktoken(vocab_file(directory, meta, "vocab.tiktoken")), meta.get("special_tokens"),
                   meta.get("pattern", "gpt2"))

    @classmethod
    def from_tiktoken(cls, path, special_tokens=None, pattern="gpt2", use_native=None):
        """A tokenizer over a tiktoken rank file, e.g. GPT-2's: from_tiktoken("gpt2.tiktoken",
        {"<|endoftext|>": 50256})."""
        return cls(read_tiktoken(path), special_tokens, pattern, use_native)


def count_words(texts, tokenizer, special_tokens):
    """{pre-token bytes: count} over texts, with special tokens' text cut out first."""
    cut = regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens else None
    counts = Counter()
    C = tokenizer._native is not None and tokenizer.pattern_name == "gpt2"
    for text in texts:
        for segment in (cut.split(text) if cut else [text]):
            counts.update(native().bpe_gpt2_split(segment) if C else tokenizer._split.findall(segment))
    try:
        return {w.encode("utf-8"): n for w, n in counts.items()}
    except UnicodeEncodeError:
        raise ValueError("train: the corpus holds a lone surrogate; it is not valid Unicode") from None
