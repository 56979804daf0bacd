"""WordPiece (BERT-style): BERT's basic pre-tokenization, likelihood-based training, greedy
longest-match-first encoding with "##" continuation pieces and [UNK], and BERT's vocab.txt.

Pre-tokenization (BERT's BasicTokenizer): drop control characters, put spaces around CJK
ideographs, split on whitespace, optionally lowercase and strip accents (NFD, drop marks), and
make every punctuation character a word of its own.

Train: words start as characters, "un" -> ["u", "##n"]; repeatedly join the pair (a, b) with
the highest score count(ab) / (count(a) * count(b)) (the pair that most raises the likelihood of
a unigram model over the symbols, relative to keeping a and b apart), until the vocabulary has
the target size. Ties: the lowest (a, b).

Encode: per word, take the longest vocabulary entry that is a prefix, then the longest "##"
entry of the rest, and so on; a word with no such split (or longer than 100 characters) is [UNK].
"""
import heapq
import os
import unicodedata
from collections import Counter, defaultdict

import regex

from ..files import atomic_write
from .base import Tokenizer, check_unicode, check_vocab_size, meta_fields, read_texts, vocab_file

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# BERT's classes: control characters (category C*, but not \t \n \r), CJK ideographs, and
# punctuation (ASCII !-/ :-@ [-` {-~ and category P*).
_CONTROL = regex.compile(r"(?![\t\n\r])\p{C}|\ufffd")
_CJK = regex.compile("([\u4E00-\u9FFF\u3400-\u4DBF\U00020000-\U0002A6DF\U0002A700-\U0002B73F"
                     "\U0002B740-\U0002B81F\U0002B820-\U0002CEAF\uF900-\uFAFF\U0002F800-\U0002FA1F])")
_PUNCT = r"!-/:-@\[-`{-~\p{P}"
_WORDS = regex.compile(rf"[{_PUNCT}]|[^\s{_PUNCT}]+")
_MARKS = regex.compile(r"\p{Mn}")


def basic_tokenize(text, lowercase=True, strip_accents=None):
    """BERT's BasicTokenizer: the words and punctuation marks of text.

    Drop control characters, put spaces around CJK ideographs, optionally lowercase and strip
    accents (NFD, then drop the marks), then split on whitespace and around each punctuation mark.
    """
    strip_accents = lowercase if strip_accents is None else strip_accents
    text = _CJK.sub(r" \1 ", _CONTROL.sub("", text))
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = _MARKS.sub("", unicodedata.normalize("NFD", text))
    return _WORDS.findall(text)


class WordPieceTokenizer(Tokenizer):
    """vocab: the tokens in id order (as in vocab.txt). Special tokens are those of SPECIALS (and
    any `[...]` names given in special_tokens) found in vocab."""
    kind = "wordpiece"

    def __init__(self, vocab, lowercase=True, strip_accents=None, unk_token="[UNK]", special_tokens=SPECIALS,
                 max_input_chars_per_word=100):
        self.vocab = list(vocab)
        bad = [t for t in self.vocab if not t or "\n" in t or "\r" in t]
        if bad:
            raise ValueError(f"WordPieceTokenizer: tokens must be non-empty and on one line, got {bad[:3]}")
        self._id = {t: i for i, t in enumerate(self.vocab)}
        if len(self._id) != len(self.vocab):
            raise ValueError("WordPieceTokenizer: a token occurs twice in the vocabulary")
        if unk_token not in self._id:
            raise ValueError(f"WordPieceTokenizer: the unknown token {unk_token!r} is not in the vocabulary")
        super().__init__({s: self._id[s] for s in special_tokens if s in self._id})
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.unk_token, self.max_input_chars_per_word = unk_token, max_input_chars_per_word
        self._cache = {}

    @property
    def vocab_size(self):
        return len(self.vocab)

    def id_to_token(self, token_id):
        return self.vocab[token_id]

    def tokenize(self, text):
        """The WordPiece tokens (strings) of text."""
        return [t for w in basic_tokenize(text, self.lowercase, self.strip_accents) for t in self._word(w)]

    def _word(self, word):
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._id:
                    break
            else:
                pieces = [self.unk_token]
                break
            pieces.append(piece)
            start = end
        if len(self._cache) < 100000:
            self._cache[word] = pieces
        return pieces

    def encode_ordinary(self, text):
        return [self._id[t] for t in self.tokenize(check_unicode(text))]

    def decode_tokens(self, ids):
        self._check_ids(ids)
        out = []
        for i in ids:
            t = self.vocab[i]
            if t.startswith("##") and out:
                out[-1] += t[2:]
            else:
                out.append(t)
        return " ".join(out)

    def decode_bytes(self, ids):
        """The words joined by single spaces, "##" pieces glued to the word before."""
        return self.decode_tokens(ids).encode("utf-8")

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, texts, vocab_size, lowercase=True, strip_accents=None, special_tokens=SPECIALS, progress=None):
        check_vocab_size("wordpiece", vocab_size)
        words = Counter(w for t in read_texts(texts) for w in basic_tokenize(t, lowercase, strip_accents))
        if not words:
            raise ValueError("train: the corpus is empty (it holds no words)")
        specials = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
        if "[UNK]" not in specials:
            specials.append("[UNK]")
        split = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
        alphabet = sorted({s for w in split for s in w})
        if vocab_size < len(specials) + len(alphabet):
            raise ValueError(f"train: vocab_size={vocab_size} is smaller than the {len(specials)} special tokens "
                             f"plus the corpus's alphabet of {len(alphabet)} symbols; use vocab_size >= "
                             f"{len(specials) + len(alphabet)}")
        vocab = specials + alphabet
        merged = train_merges(split, list(words.values()), vocab_size - len(vocab), set(vocab), progress)
        return cls(vocab + merged, lowercase, strip_accents, special_tokens=specials)

    # -- files ------------------------------------------------------------------------------

    def save_vocab_txt(self, path):
        atomic_write(path, "".join(t + "\n" for t in self.vocab))

    @classmethod
    def from_vocab_txt(cls, path, lowercase=True, strip_accents=None):
        """A tokenizer over BERT's vocab.txt (one token per line, the line number is the id)."""
        return cls(read_vocab_txt(path), lowercase, strip_accents)

    def _save_vocab(self, directory):
        self.save_vocab_txt(os.path.join(directory, "vocab.txt"))
        return {"vocab": "vocab.txt", "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "unk_token": self.unk_token}

    @classmethod
    def _load(cls, directory, meta):
        meta_fields(directory, meta, {"lowercase": bool, "strip_accents": (bool, None), "unk_token": str})
        vocab = read_vocab_txt(vocab_file(directory, meta, "vocab.txt"))
        return cls(vocab, meta.get("lowercase", True), meta.get("strip_accents"), meta.get("unk_token", "[UNK]"),
                   list(meta.get("special_tokens", SPECIALS)))


def read_vocab_txt(path):
    """The tokens of a BERT vocab.txt, one a line; a file that is not UTF-8 raises ValueError."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as error:
        raise ValueError(f"load: {path} is not UTF-8 (bad byte at offset {error.start})") from None


def join(a, b):
    return a + b[2:]


def train_merges(words, freqs, n_new, known, progress=None):
    """New tokens, in order, from joining the best-scoring pair n_new times (see the module doc).

    Pair counts are updated only for the words holding the joined pair; a heap holds candidate
    scores, and an entry whose score is no longer current is skipped (lazy deletion). A join
    changes count(a) and count(b), so every pair touching a, b or the new symbol is re-scored.
    """
    sym_count, pair_count = Counter(), Counter()
    where, touching = defaultdict(set), defaultdict(set)   # pair -> words; symbol -> pairs
    for k, (w, f) in enumerate(zip(words, freqs)):
        for s in w:
            sym_count[s] += f
        for p in zip(w, w[1:]):
            pair_count[p] += f
            where[p].add(k)
            touching[p[0]].add(p)
            touching[p[1]].add(p)

    def score(p):
        return pair_count[p] / (sym_count[p[0]] * sym_count[p[1]])

    heap = [(-score(p), p) for p in pair_count]
    heapq.heapify(heap)
    new = []
    while len(new) < n_new and heap:
        neg, p = heapq.heappop(heap)
        if pair_count.get(p, 0) <= 0 or -neg != score(p):
            continue
        a, b = p
        c = join(a, b)
        if c not in known:
            known.add(c)
            new.append(c)
        changed = {a, b, c}
        for k in sorted(where.pop(p)):
            w, f = words[k], freqs[k]
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(c)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            for q in zip(w, w[1:]):
                pair_count[q] -= f
            for s in w:
                sym_count[s] -= f
            for q in zip(out, out[1:]):
                pair_count[q] += f
                where[q].add(k)
                touching[q[0]].add(q)
                touching[q[1]].add(q)
            for s in out:
                sym_count[s] += f
            words[k] = out
        for s in changed:
            for q in list(touching[s]):
                if pair_count.get(q, 0) > 0:
                    heapq.heappush(heap, (-score(q), q))
                else:
                    touching[s].discard(q)
        if len(heap) > 4 * len(pair_count) + 1000:
            heap = [(-score(q), q) for q, n in pair_count.items() if n > 0]
            heapq.heapify(heap)
        if progress and len(new) % 64 == 0:
            progress(len(new), n_new)
    return new
