"""Pairwise AI judgements read from a model's next-token probabilities: no sampling, no parsing.

The judge is shown two answers labelled A and B and asked which is better; its verdict is the
distribution of the token that would come next, restricted to the two labels:

    z = logits at the last position of the judgement prompt            (V,)
    p(A) = exp(z[a]) / (exp(z[a]) + exp(z[b])),  p(B) = 1 - p(A)         a, b: the label tokens
    label_mass = (exp(z[a]) + exp(z[b])) / sum(exp(z))                  how much the model put on either

The label ids are the ones the tokenizer makes for "A" and "B" right after the prompt's text:
encode(text + "A") must be encode(text) followed by exactly one token (else the label would not be
what the model predicts next, and LabelTokenError says so).
"""
import numpy as np

from ..generate import _left_pad

LABELS = ("A", "B")


class LabelTokenError(ValueError):
    """A label is not a single token after the judgement prompt."""


def label_token_ids(tokenizer, text, labels=LABELS):
    """[id of each label as the next token after text], checked to be one token each and distinct."""
    base = list(tokenizer.encode(text, allowed_special="all"))
    ids = []
    for label in labels:
        with_label = list(tokenizer.encode(text + label, allowed_special="all"))
        if len(with_label) != len(base) + 1 or with_label[:len(base)] != base:
            raise LabelTokenError(
                f"judge: after the judgement prompt the tokenizer does not make {label!r} one token of its own "
                f"(the prompt's {len(base)} tokens become {len(with_label)} with it); end the judgement prompt "
                "so that the label starts a new token (a newline or a space before it)")
        ids.append(with_label[-1])
    if len(set(ids)) != len(ids):
        raise LabelTokenError(f"judge: the labels {labels} are the same token {ids[0]}")
    return ids


def choice_probabilities(model, prompts, choices, batch_size=8, on_batch=None):
    """(p, label_mass): p (N, 2) float64, each row the two choices' probabilities normalised over the
    two; label_mass (N,) the share of the full next-token distribution they hold.

    prompts: N token-id lists; choices: (N, 2) the two candidate next-token ids of each prompt.
    Prompts are batched left-padded (a key padding mask hides the pads), so every row's last position
    is its own prompt's end. on_batch(n) is called after each batch of n prompts.
    """
    choices = np.asarray(choices, dtype=np.int64).reshape(len(prompts), 2)
    p, mass = np.zeros((len(prompts), 2)), np.zeros(len(prompts))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            context = model.config.block_size
            for row in chunk:
                if len(row) > context:
                    raise ValueError(f"judge: a judgement prompt is {len(row)} tokens, longer than the model's "
                                     f"context of {context}; shorten the judgement template or the answers")
            ids, mask, positions = _left_pad(chunk)
            logits = model.infer(ids, positions, None if mask.all() else mask, None, last_only=True)[:, -1]  # (b, V)
            z = np.asarray(logits, dtype=np.float64)
            log_total = np.logaddexp.reduce(z, axis=-1)                                            # (b,)
            picked = np.take_along_axis(z, choices[start:start + len(chunk)], axis=-1)            # (b, 2)
            log_pair = np.logaddexp(picked[:, 0], picked[:, 1])
            p[start:start + len(chunk)] = np.exp(picked - log_pair[:, None])
            mass[start:start + len(chunk)] = np.exp(log_pair - log_total)
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return p, mass
