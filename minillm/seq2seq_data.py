"""Sequence-to-sequence training data made in-process, and T5's span corruption.

Tasks (character level, examples drawn at random from an RNG):
    reverse  "kxqa" -> "aqxk"          letters a-z, 1 to max_len of them
    sort     "3141" -> "1134"          digits, 1 to max_len of them
    add      "57+8" -> "65"            two numbers of 1 to max_len // 2 digits
An example is held out (the val split) when the CRC-32 of its source is 0 mod 10, so the train and
val splits never share a source, however many examples are drawn.

Span corruption (Raffel et al. 2020; T5's random_spans_noise_mask), on a token stream:
    noise = round(L * density) tokens (at least 1, at most L - 1) in round(noise / mean_span) spans
    (at least 1); span lengths are random segmentations of the noise and non-noise counts, and
    spans alternate non-noise, noise, ... starting with non-noise.
    source: each noise span replaced by one sentinel (<extra_id_0>, <extra_id_1>, ...), then EOS
    target: each sentinel followed by the span it stands for, then EOS
Batches: sources right-padded with pad, labels = target ids + EOS, padded with -100 (no loss).
"""
import string
import zlib

import numpy as np

from .data import TokenData

TASKS = ("reverse", "sort", "add")
ALPHABETS = {"reverse": string.ascii_lowercase, "sort": string.digits, "add": string.digits + "+"}
SPECIALS = ("<pad>", "</s>", "<unk>")           # ids 0, 1, 2: T5's pad, EOS and unknown
IGNORE = -100


def sentinel(k):
    return f"<extra_id_{k}>"


def make_example(task, rng, max_len):
    """(source, target) strings of one random example of the task."""
    if task == "reverse":
        s = "".join(rng.choice(list(ALPHABETS["reverse"]), size=int(rng.integers(1, max_len + 1))))
        return s, s[::-1]
    if task == "sort":
        s = "".join(rng.choice(list(string.digits), size=int(rng.integers(1, max_len + 1))))
        return s, "".join(sorted(s))
    if task == "add":
        digits = max(1, max_len // 2)
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, digits + 1)))) for _ in range(2))
        return f"{a}+{b}", str(a + b)
    raise ValueError(f"unknown seq2seq task {task!r}; the tasks are {TASKS} and span_corruption")


def is_held_out(source):
    """The val split: sources whose CRC-32 is 0 mod 10 (a tenth), never used for training."""
    return zlib.crc32(source.encode("utf-8")) % 10 == 0


def draw_examples(task, rng, n, max_len, split):
    out = []
    while len(out) < n:
        src, tgt = make_example(task, rng, max_len)
        if is_held_out(src) == (split == "val"):
            out.append((src, tgt))
    return out


def pad_batch(sources, targets, pad):
    """(src (B, S) padded with pad, labels (B, T) padded with -100) from lists of id lists."""
    S, T = max(map(len, sources)), max(map(len, targets))
    src = np.full((len(sources), S), pad, np.int64)
    labels = np.full((len(targets), T), IGNORE, np.int64)
    for b, (s, t) in enumerate(zip(sources, targets)):
        src[b, :len(s)], labels[b, :len(t)] = s, t
    return src, labels


class TaskData:
    """Batches of a generated task: get_batch(split, batch_size, block_size, rng, rows) -> (src, labels)."""

    def __init__(self, task, tokenizer, max_len=12):
        if task not in TASKS:
            raise ValueError(f"unknown seq2seq task {task!r}; the tasks are {TASKS} and span_corruption")
        self.task, self.tokenizer, self.max_len = task, tokenizer, max_len
        self.pad, self.eos = tokenizer.special_tokens["<pad>"], tokenizer.special_tokens["</s>"]
        self.splits = None

    def describe(self):
        return f"task {self.task}: examples drawn at random, up to {self.max_len} characters; a tenth held out"

    def encode(self, text):
        return self.tokenizer.encode_ordinary(text) + [self.eos]

    def get_batch(self, split, batch_size, block_size, rng, rows=None):
        pairs = draw_examples(self.task, rng, batch_size, self.max_len, split)
        if rows is not None:
            pairs = pairs[rows]
            if not pairs:
                return np.empty((0, 1), np.int64), np.empty((0, 1), np.int64)
        src, labels = pad_batch([self.encode(s) for s, _ in pairs], [self.encode(t) for _, t in pairs], self.pad)
        if max(src.shape[1], labels.shape[1]) > block_size:
            raise ValueError(f"task {self.task}: an example of {max(src.shape[1], labels.shape[1])} tokens does not fit "
                             f"block_size {block_size}; raise block_size or lower task_max_len")
        return src, labels


def random_spans_noise_mask(length, noise_density, mean_noise_span_length, rng):
    """bool (length,): which tokens are noise (see the module docstring), as T5 draws them."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_nonnoise = length - num_noise

    def segmentation(num_items, num_segments):
        """num_segments random positive lengths summing to num_items."""
        first = np.arange(num_items - 1) < (num_segments - 1)
        rng.shuffle(first)
        segment_id = np.cumsum(np.concatenate([[0], first]))
        return np.bincount(segment_id, minlength=num_segments)

    lengths = np.stack([segmentation(num_nonnoise, num_spans), segmentation(num_noise, num_spans)], axis=1).reshape(-1)
    starts = np.zeros(length, np.int64)
    starts[np.cumsum(lengths)[:-1]] = 1
    return np.cumsum(starts) % 2 == 1


def span_corrupt(ids, noise, sentinels, eos):
    """(source ids, target ids) of ids with the noise spans replaced by sentinels (ids of
    <extra_id_0>, <extra_id_1>, ...), each ending with eos."""
    ids = list(ids)
    source, target, k = [], [], 0
    for i, token in enumerate(ids):
        starts = noise[i] and (i == 0 or not noise[i - 1])
        if starts:
            if k >= len(sentinels):
                raise ValueError(f"span corruption: more noise spans than the {len(sentinels)} sentinel tokens")
            source.append(sentinels[k])
            target.append(sentinels[k])
            k += 1
        (target if noise[i] else source).append(token)
    return source + [eos], target + [eos]


def num_sentinels(block_size, noise_density, mean_noise_span_length):
    """The most noise spans a window of block_size tokens can get."""
    return max(int(round(max(int(round(block_size * noise_density)), 1) / mean_noise_span_length)), 1)


class SpanCorruptionData:
    """T5-style denoising batches from a token stream (windows of block_size tokens)."""

    def __init__(self, ids, tokenizer, val_fraction=0.1, noise_density=0.15, mean_noise_span_length=3.0):
        self.stream = TokenData(ids, val_fraction)
        self.splits = self.stream.splits
        self.pad, self.eos = tokenizer.special_tokens["<pad>"], tokenizer.special_tokens["</s>"]
        self.sentinels = [tokenizer.special_tokens[s] for s in sorted(
            (s for s in tokenizer.special_tokens if s.startswith("<extra_id_")), key=lambda s: int(s[10:-1]))]
        self.noise_density, self.mean_span = noise_density, mean_noise_span_length

    def get_batch(self, split, batch_size, block_size, rng, rows=None):
        windows, _ = self.stream.get_batch(split, batch_size, block_size - 1, rng)
        pairs = [span_corrupt(w, random_spans_noise_mask(len(w), self.noise_density, self.mean_span, rng),
                              self.sentinels, self.eos) for w in windows]
        if rows is not None:
            pairs = pairs[rows]
            if not pairs:
                return np.empty((0, 1), np.int64), np.empty((0, 1), np.int64)
        return pad_batch([s for s, _ in pairs], [t for _, t in pairs], self.pad)
