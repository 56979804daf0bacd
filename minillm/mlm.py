"""Masked-language-model pretraining data (BERT): which tokens to predict and what the model sees.

For each sequence of the batch, from its non-special tokens choose max(1, round(p * n)) at random
(p = 0.15, BERT's rate); of the chosen, 80% become [MASK], 10% a random non-special token, 10%
stay as they are. The labels hold the chosen tokens' ids and -100 everywhere else, so the loss is
taken on the chosen tokens only (all of them, whatever they were replaced by).

MLMData cuts windows of block_size - 2 tokens out of the token stream and frames each one as
[CLS] window [SEP], then masks it; evaluate_mlm runs the model on consecutive windows of a split
(each masked with a fixed seed) and reports the loss and accuracy on the masked tokens.
"""
import numpy as np

from .autograd import no_grad
from .data import TokenData

IGNORE = -100
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1     # the rest (0.1) stays unchanged


def special_ids(tokenizer):
    """The ids of the tokenizer's special tokens, and its [MASK], [CLS], [SEP] ids."""
    specials = getattr(tokenizer, "special_tokens", {})
    missing = [t for t in ("[MASK]", "[CLS]", "[SEP]") if t not in specials]
    if missing:
        raise ValueError(f"MLM training needs a tokenizer with [MASK], [CLS] and [SEP] tokens (a WordPiece one); "
                         f"this one lacks {missing}")
    return np.array(sorted(specials.values()), np.int64), specials["[MASK]"], specials["[CLS]"], specials["[SEP]"]


def mask_tokens(ids, rng, vocab_size, mask_id, specials, probability=0.15):
    """(inputs, labels) for ids (B, T) (see the module docstring). specials: ids never chosen."""
    ids = np.asarray(ids, np.int64)
    if not 0 < probability < 1:
        raise ValueError(f"mask_tokens: probability must be in (0, 1), got {probability}")
    inputs, labels = ids.copy(), np.full(ids.shape, IGNORE, np.int64)
    ordinary = np.setdiff1d(np.arange(vocab_size), specials)
    for b in range(ids.shape[0]):
        candidates = np.flatnonzero(~np.isin(ids[b], specials))
        if not len(candidates):
            continue
        n = max(1, int(round(probability * len(candidates))))
        chosen = rng.choice(candidates, size=n, replace=False)
        labels[b, chosen] = ids[b, chosen]
        r = rng.random(n)
        masked, randomised = chosen[r < MASK_FRACTION], chosen[(r >= MASK_FRACTION) & (r < MASK_FRACTION + RANDOM_FRACTION)]
        inputs[b, masked] = mask_id
        inputs[b, randomised] = rng.choice(ordinary, size=len(randomised))
    return inputs, labels


class MLMData:
    """MLM batches from a token stream: get_batch(split, batch_size, block_size, rng, rows) -> (inputs,
    labels), both (batch_size, block_size), the Trainer's batch contract (minillm/train.py)."""

    def __init__(self, ids, tokenizer, val_fraction=0.1, probability=0.15):
        self.stream = TokenData(ids, val_fraction)
        self.splits = self.stream.splits
        self.specials, self.mask_id, self.cls_id, self.sep_id = special_ids(tokenizer)
        self.vocab_size, self.probability = tokenizer.vocab_size, probability

    def frame(self, windows):
        """[CLS] window [SEP] for each row of windows (B, block_size - 2)."""
        B = windows.shape[0]
        return np.concatenate([np.full((B, 1), self.cls_id), windows, np.full((B, 1), self.sep_id)], axis=1)

    def get_batch(self, split, batch_size, block_size, rng, rows=None):
        if block_size < 3:
            raise ValueError(f"MLM batches need block_size >= 3 ([CLS], a token, [SEP]), got {block_size}")
        windows, _ = self.stream.get_batch(split, batch_size, block_size - 2, rng)
        inputs, labels = mask_tokens(self.frame(windows), rng, self.vocab_size, self.mask_id, self.specials,
                                     self.probability)
        if rows is not None:                          # every rank draws the whole batch, keeps its rows
            inputs, labels = inputs[rows], labels[rows]
        return inputs, labels


def evaluate_mlm(model, data, split="val", batch_size=32, seed=0, max_windows=None):
    """{"loss", "accuracy", "masked_tokens", "windows"}: the mean cross-entropy and the accuracy of
    the argmax on the masked tokens of consecutive block_size windows of split (masks from seed)."""
    block = model.config.block_size
    stream = data.splits[split]
    n = len(stream) // (block - 2)
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"evaluation needs at least {block - 2} tokens in the {split} split, got {len(stream)}")
    windows = np.asarray(stream[: n * (block - 2)], np.int64).reshape(n, block - 2)
    rng = np.random.default_rng(seed)
    total_loss = correct = count = 0.0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for i in range(0, n, batch_size):
                inputs, labels = mask_tokens(data.frame(windows[i:i + batch_size]), rng, data.vocab_size,
                                             data.mask_id, data.specials, data.probability)
                logits, loss = model(inputs, labels)
                target = labels.reshape(-1)[labels.reshape(-1) != IGNORE]
                total_loss += float(loss.data) * len(target)
                correct += float(np.sum(np.argmax(logits.data, axis=-1) == target))
                count += len(target)
    finally:
        model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count, "masked_tokens": int(count), "windows": n}
