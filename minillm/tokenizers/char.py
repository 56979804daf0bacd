"""Character-level tokenizer (nanoGPT's shakespeare-char): one token per character, the vocabulary
being the sorted set of characters seen in training, so the id of a character is its rank in it.
Special tokens (the seq2seq models' <pad>, </s>, sentinels), when given, take the ids before the
characters: special i is id i, character c is len(specials) + rank(c).

Encode is a binary search of the text's code points in the sorted vocabulary (np.searchsorted);
a character outside the vocabulary is an error, not a silent unknown token. Saved as a directory
like the other tokenizers, with the characters in minillm_tokenizer.json.
"""
import numpy as np

from .base import Tokenizer, check_unicode, meta_fields, read_texts


class CharTokenizer(Tokenizer):
    """chars: the vocabulary, sorted and distinct (a str or a list of one-character strings);
    special_tokens: names of special tokens, which get ids 0, 1, ... before the characters."""
    kind = "char"

    def __init__(self, chars, special_tokens=()):
        specials = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
        if any(not isinstance(t, str) or len(t) < 2 for t in specials) or len(set(specials)) != len(specials):
            raise ValueError("CharTokenizer: special tokens must be distinct strings of two or more characters")
        super().__init__({t: i for i, t in enumerate(specials)})
        self.offset = len(specials)
        self.chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer: chars must be single characters")
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)   # sorted
        if np.any(np.diff(self.codepoints.astype(np.int64)) <= 0):
            raise ValueError("CharTokenizer: chars must be sorted and distinct")

    @classmethod
    def train(cls, texts, vocab_size=None, progress=None):
        """The characters of texts (a str or an iterable of str). vocab_size and progress are taken
        for the common train() signature and not used: the text decides the vocabulary."""
        return cls(sorted(set().union(*map(set, read_texts(texts)))))

    @property
    def vocab_size(self):
        return self.offset + len(self.chars)

    def id_to_token(self, token_id):
        return self._special_ids[token_id] if token_id < self.offset else self.chars[token_id - self.offset]

    def encode_ordinary(self, text):
        """Ids of text's characters; a character outside the vocabulary raises ValueError."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be str, got {type(text).__name__}")
        points = np.frombuffer(check_unicode(text).encode("utf-32-le"), dtype=np.uint32)
        n = len(self.chars)
        ids = np.searchsorted(self.codepoints, points)
        bad = (ids >= n) | (self.codepoints[np.minimum(ids, n - 1)] != points) if n else np.ones(len(points), bool)
        if bad.any():
            raise ValueError(f"character {chr(points[bad][0])!r} is not in the tokenizer's vocabulary")
        return (ids + self.offset).tolist() if self.offset else ids.tolist()

    def decode(self, ids, errors="strict"):
        """The characters of ids joined (errors is taken for the common signature: characters are
        always valid text)."""
        ids = self._as_ids(ids)
        if self.offset:
            return "".join([self._special_ids[i] if i < self.offset else self.chars[i - self.offset] for i in ids])
        return "".join([self.chars[i] for i in ids])

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8", errors="surrogatepass")

    def _as_ids(self, ids):
        ids = np.asarray(ids)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.vocab_size):
            self._check_ids(ids.tolist())
        return ids.tolist()

    def _save_vocab(self, directory):
        return {"chars": "".join(self.chars)}

    @classmethod
    def _load(cls, directory, meta):
        meta_fields(directory, meta, {"chars": str})
        if "chars" not in meta:
            raise ValueError(f"load: {directory}: a char tokenizer's file needs 'chars'")
        specials = meta.get("special_tokens") or {}
        if sorted(specials.values()) != list(range(len(specials))):
            raise ValueError(f"load: {directory}: a char tokenizer's special tokens must have the ids 0..{len(specials) - 1}"
                             f" before the characters, got {sorted(specials.values())[:8]}")
        return cls(meta["chars"], sorted(specials, key=specials.get))
