"""Unigram language-model tokenizer (SentencePiece-style, Kudo 2018): train, encode, sample, decode.

A text is normalised (whitespace runs become one space, SentencePiece's "▁" counts as a space),
split into words, and each word gets "▁" in front ("▁the"). A word's segmentation x = (x1..xk)
has probability P(x) = prod p(xi) under a unigram model over pieces; encode picks the most likely
segmentation (Viterbi), encode_sample draws one from P(x)^alpha (subword regularisation).

Train: seed with every character and the most frequent substrings (score freq * length), then
repeat: EM (E: expected piece counts by forward-backward over each word's lattice; M: log p =
log(count / total)), and prune the 25% of pieces whose removal costs the likelihood least (the
loss of a piece is how much worse its best segmentation without it is, weighted by its count),
until the target size. Characters are never pruned. Byte fallback: a character that is not a
piece becomes its UTF-8 bytes as the pieces <0x00>..<0xFF>, so every text round-trips up to the
normalisation.
"""
import math
import os
import random
from collections import Counter

from ..files import atomic_write
from .base import Tokenizer, check_unicode, check_vocab_size, meta_fields, read_texts, vocab_file

SPACE = "\u2581"   # "▁"
BYTES = [f"<0x{b:02X}>" for b in range(256)]
NEG = -1e30


def _native():
    """minillm._C when the native backend is in use, else None."""
    from .. import kernels
    return kernels.native._C if kernels.native.AVAILABLE and kernels.get_backend() == "native" else None


def _rounded(x):
    """x to 10 significant digits: sums taken in another order (threads, C++) sort the same."""
    return float(f"{x:.10g}")


def normalize(text):
    """The text a Unigram tokenizer sees: whitespace runs (and ▁) become one space; stripped."""
    return " ".join(text.replace(SPACE, " ").split())


def words_of(text):
    return [SPACE + w for w in text.replace(SPACE, " ").split()]


def _is_float(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _logsumexp(values):
    m = max(values)
    return m if m <= NEG else m + math.log(sum(math.exp(v - m) for v in values))


class UnigramTokenizer(Tokenizer):
    """pieces: [(piece, log p)] for the learned pieces (characters and longer). Ids: the special
    tokens first, then the 256 byte pieces, then `pieces` in order."""
    kind = "unigram"

    def __init__(self, pieces, special_tokens=("<unk>", "<s>", "</s>"), max_piece_len=16, use_native=None):
        special_tokens = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
        if any(not s or any(c.isspace() for c in s) for s in special_tokens):
            raise ValueError(f"UnigramTokenizer: special tokens must be non-empty and hold no whitespace, "
                             f"got {special_tokens}")
        super().__init__({s: i for i, s in enumerate(special_tokens)})
        self.pieces = [(p, float(s)) for p, s in pieces]
        self.max_piece_len = max_piece_len
        self._offset = len(special_tokens) + 256
        self._index = {p: k for k, (p, _) in enumerate(self.pieces)}   # piece -> position in pieces
        if len(self._index) != len(self.pieces):
            raise ValueError("UnigramTokenizer: a piece occurs twice")
        self._score = [s for _, s in self.pieces]
        self._unk_score = min(self._score, default=0.0) - 10.0   # byte fallback: worse than any piece
        self._tokens = special_tokens + BYTES + [p for p, _ in self.pieces]
        self._cache = {}
        self.use_native = use_native
        C = _native() if use_native in (None, True) else None
        if use_native and C is None:
            raise RuntimeError("UnigramTokenizer: use_native=True but the native extension is not in use")
        self._native = (C.UnigramModel(pieces=[p for p, _ in self.pieces], scores=self._score,
                                       unk_score=self._unk_score, max_len=max_piece_len)
                        if C is not None else None)

    def _like(self, pieces):
        return type(self)(pieces, list(self.special_tokens), self.max_piece_len, self.use_native)

    @property
    def vocab_size(self):
        return len(self._tokens)

    def id_to_token(self, token_id):
        return self._tokens[token_id]

    # -- the lattice ------------------------------------------------------------------------

    def _edges(self, word, index, scores):
        """edges[e] = [(start, id or None, score)] of the pieces ending at e (None: a character
        with no piece, to be encoded as bytes)."""
        n, L = len(word), self.max_piece_len
        edges = [[] for _ in range(n + 1)]
        for e in range(1, n + 1):
            for s in range(max(0, e - L), e):
                i = index.get(word[s:e])
                if i is not None:
                    edges[e].append((s, i, scores[i]))
            if word[e - 1] not in index:
                edges[e].append((e - 1, None, self._unk_score))
        return edges

    def _viterbi(self, word, index, scores):
        edges = self._edges(word, index, scores)
        best, back = [0.0] + [NEG] * len(word), [None] * (len(word) + 1)
        for e in range(1, len(word) + 1):
            for s, i, sc in edges[e]:
                if best[s] + sc > best[e]:
                    best[e], back[e] = best[s] + sc, (s, i)
        return self._path(word, back)

    @staticmethod
    def _path(word, back):
        out, e = [], len(word)
        while e > 0:
            s, i = back[e]
            out.append(i)
            e = s
        return out[::-1]

    def viterbi_paths(self, words, exclude=None):
        """The best path of each word: piece indices, None for an unknown character. exclude: the
        index of a piece to leave out of the lattices."""
        if self._native is not None:
            return [[i if i >= 0 else None for i in path]
                    for path in self._native.viterbi(words, -1 if exclude is None else exclude)]
        index = self._index
        if exclude is not None:
            index = dict(index)
            del index[self.pieces[exclude][0]]
        return [self._viterbi(w, index, self._score) for w in words]

    def expected_counts(self, words, freqs):
        """(expected uses of each piece over the words, weighted by freqs; sum of freq * log Z):
        the E-step, by forward-backward over each word's lattice."""
        if self._native is not None:
            return self._native.expected_counts(words, freqs)
        expected, loglik = [0.0] * len(self.pieces), 0.0
        for w, f in zip(words, freqs):
            edges = self._edges(w, self._index, self._score)
            n = len(w)
            fwd = [0.0] + [NEG] * n
            for e in range(1, n + 1):
                fwd[e] = _logsumexp([fwd[s] + sc for s, _, sc in edges[e]])
            bwd = [NEG] * n + [0.0]
            for e in range(n, 0, -1):
                for s, i, sc in edges[e]:
                    bwd[s] = _logsumexp([bwd[s], sc + bwd[e]])
                    if i is not None:
                        expected[i] += f * math.exp(fwd[s] + sc + bwd[e] - fwd[n])
            loglik += f * fwd[n]
        return expected, loglik

    # -- encode / decode --------------------------------------------------------------------

    def _piece_ids(self, word, path):
        ids, at = [], 0
        for i in path:
            if i is None:
                ids += [len(self.special_tokens) + b for b in word[at].encode("utf-8", "surrogatepass")]
                at += 1
            else:
                ids.append(self._offset + i)
                at += len(self.pieces[i][0])
        return ids

    def encode_ordinary(self, text):
        """Ids of the most likely segmentation of each word (Viterbi)."""
        words = words_of(check_unicode(text) if self._native is None else text)
        found, missing = {}, []
        for w in dict.fromkeys(words):
            hit = self._cache.get(w)
            if hit is None:
                missing.append(w)
            else:
                found[w] = hit
        for w, path in zip(missing, self.viterbi_paths(missing)):
            found[w] = self._piece_ids(w, path)
        if len(self._cache) > 100000:    # (other threads may share the cache: only `found` is read below)
            self._cache.clear()
        self._cache.update((w, found[w]) for w in missing)
        return [i for w in words for i in found[w]]

    def encode_sample(self, text, alpha=0.1, seed=None):
        """Ids of a segmentation drawn with probability proportional to P(x)^alpha: forward
        filtering (sums over the lattice) then sampling backwards. alpha -> 0 is uniform over
        segmentations; large alpha approaches encode()."""
        rng = random.Random(seed)
        check_unicode(text)
        index = self._index
        scores = [alpha * s for s in self._score]
        ids = []
        for w in words_of(text):
            edges = self._edges(w, index, scores)
            unk = alpha * self._unk_score
            fwd = [0.0] + [NEG] * len(w)
            for e in range(1, len(w) + 1):
                fwd[e] = _logsumexp([fwd[s] + (sc if i is not None else unk) for s, i, sc in edges[e]])
            back, e = [None] * (len(w) + 1), len(w)
            while e > 0:
                logits = [fwd[s] + (sc if i is not None else unk) for s, i, sc in edges[e]]
                m = max(logits)
                s, i, _ = rng.choices(edges[e], weights=[math.exp(v - m) for v in logits])[0]
                back[e] = (s, i)
                e = s
            ids += self._piece_ids(w, self._path(w, back))
        return ids

    def decode_bytes(self, ids):
        """UTF-8 bytes of the pieces with ▁ as a space and the leading space dropped; byte pieces
        as their bytes; special tokens as their text."""
        self._check_ids(ids)
        n_special, out = len(self.special_tokens), bytearray()
        for i in ids:
            if i < n_special:
                out += self._tokens[i].encode("utf-8")
            elif i < self._offset:
                out.append(i - n_special)
            else:
                out += self._tokens[i].replace(SPACE, " ").encode("utf-8")
        return bytes(out[1:] if out[:1] == b" " and ids and self._tokens[ids[0]].startswith(SPACE) else out)

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, texts, vocab_size, special_tokens=("<unk>", "<s>", "</s>"), max_piece_len=16,
              seed_size=None, em_iterations=2, shrink=0.75, progress=None, use_native=None):
        """Learn at most vocab_size - len(special_tokens) - 256 pieces from texts (str or iterable of
        str); fewer when the corpus has fewer substrings seen twice (EM drops pieces whose expected
        count is under 0.5). progress(done, total) is called after each round of pruning."""
        check_vocab_size("unigram", vocab_size)
        special_tokens = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
        target = vocab_size - len(special_tokens) - 256
        if target < 1:
            raise ValueError(f"train: vocab_size={vocab_size} leaves no room for pieces after the "
                             f"{len(special_tokens)} special tokens and the 256 byte pieces; "
                             f"use vocab_size >= {len(special_tokens) + 257}")
        words = Counter(w for t in read_texts(texts) for w in words_of(t))
        if not words:
            raise ValueError("train: the corpus is empty (it holds no words)")
        reserved = set(special_tokens) | set(BYTES)
        chars = Counter()
        subs = Counter()
        for w, f in words.items():
            for c in w:
                chars[c] += f
            for s in range(len(w)):
                for e in range(s + 2, min(len(w), s + max_piece_len) + 1):
                    subs[w[s:e]] += f
        chars = dict(chars.most_common(target))           # the rarest fall back to bytes if too many
        seed_size = seed_size or max(4 * target, 2000)
        seeds = sorted(((f * len(p), p) for p, f in subs.items() if f > 1 and p not in reserved), reverse=True)
        freq = {**{p: subs[p] for _, p in seeds[:seed_size]}, **chars}
        total = sum(freq.values())
        model = cls([(p, math.log(f / total)) for p, f in freq.items()], special_tokens, max_piece_len, use_native)
        to_prune = max(len(model.pieces) - target, 0)
        while True:
            for _ in range(em_iterations):
                model = model._em_step(words, chars)
            if progress:
                progress(to_prune - max(len(model.pieces) - target, 0), to_prune)
            if len(model.pieces) <= target:
                break
            model = model._prune(words, chars, max(target, int(len(model.pieces) * shrink)))
        return model

    def _em_step(self, words, chars):
        """One EM iteration: expected counts by forward-backward, then log p = log(count / total)."""
        expected, _ = self.expected_counts(list(words), list(words.values()))
        kept = [(p, c) for (p, _), c in zip(self.pieces, expected) if c >= 0.5 or p in chars]
        total = sum(max(c, 1e-3) for _, c in kept)
        kept.sort(key=lambda pc: (-_rounded(pc[1]), pc[0]))   # ties broken by the piece, not by float noise
        return self._like([(p, math.log(max(c, 1e-3) / total)) for p, c in kept])

    def _prune(self, words, chars, size):
        """Keep the `size` pieces whose removal would cost the most likelihood (and every char)."""
        freq = [0.0] * len(self.pieces)
        for f, path in zip(words.values(), self.viterbi_paths(list(words))):
            for i in path:
                if i is not None:
                    freq[i] += f
        total = sum(freq) or 1.0
        loss = []
        for k, (p, _) in enumerate(self.pieces):
            if p in chars or freq[k] == 0:
                loss.append(math.inf if p in chars else -math.inf)
                continue
            alt = self.viterbi_paths([p], exclude=k)[0]
            logsum_alt = math.log(total + freq[k] * (len(alt) - 1))
            logp_alt = sum(math.log(freq[i] + freq[k]) - logsum_alt if i is not None else self._unk_score for i in alt)
            loss.append(freq[k] * (math.log(freq[k] / total) - logp_alt))
        order = sorted(range(len(self.pieces)), key=lambda k: (-_rounded(loss[k]), self.pieces[k][0]))[:size]
        keep = sorted(order)
        return self._like([self.pieces[k] for k in keep])

    # -- files ------------------------------------------------------------------------------

    def _save_vocab(self, directory):
        """unigram.vocab: `piece<TAB>log p` per line in id order (SentencePiece's .vocab layout)."""
        lines = [f"{t}\t0\n" for t in self._tokens[:self._offset]] + [f"{p}\t{s!r}\n" for p, s in self.pieces]
        atomic_write(os.path.join(directory, "unigram.vocab"), "".join(lines))
        return {"vocab": "unigram.vocab", "max_piece_len": self.max_piece_len}

    @classmethod
    def _load(cls, directory, meta):
        meta_fields(directory, meta, {"max_piece_len": int})
        special = meta.get("special_tokens", {})
        specials = sorted(special, key=special.get)
        path = vocab_file(directory, meta, "unigram.vocab")
        try:
            with open(path, encoding="utf-8") as f:
                rows = [line.rstrip("\n").split("\t") for line in f if line.strip("\n")]
        except UnicodeDecodeError as error:
            raise ValueError(f"load: {path} is not UTF-8 (bad byte at offset {error.start})") from None
        if [r[0] for r in rows[:len(specials) + 256]] != specials + BYTES:
            raise ValueError(f"load: {directory}: the vocabulary does not start with the special tokens and "
                             f"the 256 byte pieces")
        pieces = []
        for n, row in enumerate(rows[len(specials) + 256:], len(specials) + 257):
            score = float(row[1]) if len(row) == 2 and _is_float(row[1]) else None
            if score is None or not math.isfinite(score) or not row[0]:
                raise ValueError(f"load: {path}: line {n} is not `piece<TAB>log p` with a finite log p: {row!r:.60}")
            pieces.append((row[0], score))
        max_len = meta.get("max_piece_len", 16)
        if max_len < 1:
            raise ValueError(f"load: {directory}: max_piece_len must be >= 1, got {max_len}")
        return cls(pieces, specials, max_len)
