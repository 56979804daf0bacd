"""Log-probabilities of given tokens under a model, per token and summed per sequence.

    token_logprobs(logits, targets)[b, t] = log softmax(logits[b, t])[targets[b, t]]   (0 where target == -100)
    sequence_logprobs(logits, targets)[b] = sum over t of token_logprobs[b, t]

logits: (B, T, V) Tensor (or array); targets: (B, T) ints, -100 where a position is not scored (the
prompt, the padding). Both are autograd expressions (through F.cross_entropy with reduction="none"),
so a loss built on them back-propagates into the model; under no_grad they are plain values.
"""
import numpy as np

from .. import functional as F

IGNORE = -100


def token_logprobs(logits, targets):
    """(B, T) log-probability of each target token; 0 at ignored positions."""
    B, T, V = logits.shape
    targets = np.asarray(targets)
    if targets.shape != (B, T):
        raise ValueError(f"token_logprobs: targets must have shape {(B, T)} to match logits {logits.shape}, "
                         f"got {targets.shape}")
    nll = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return (-nll).reshape(B, T)


def sequence_logprobs(logits, targets):
    """(B,) sum of the scored tokens' log-probabilities of each row."""
    return token_logprobs(logits, targets).sum(axis=1)
