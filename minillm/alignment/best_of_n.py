"""Best-of-n sampling: draw n replies, keep the one a reward model scores highest (`minillm generate
--best-of N --reward-model DIR`, whose command is in minillm/pretrained_cli.py).

    best, ranked = best_of_n(model, reward_model, prompt_ids, n, stop_tokens={eos}, seed=0)
    ranked: [(reward, reply ids)] of every sample, highest first

Each sample is scored as the reward model was trained: the prompt, the reply, and the end marker when
the reply ended on a stop token (the row a preference record makes). The reward model must read the
policy's tokens: its tokenizer must be the policy's.
"""
import numpy as np

from ..generate import generate


def scored_rows(prompt_ids, replies, ended):
    """(ids, key padding mask) (n, T) right-padded rows: prompt + reply (+ its stop token)."""
    rows = [list(prompt_ids) + list(reply) + ([stop] if stop is not None else []) for reply, stop in zip(replies, ended)]
    T = max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), T), np.int64), np.zeros((len(rows), T), bool)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, True
    return ids, mask


def best_of_n(model, reward_model, prompt_ids, n, max_new_tokens=64, stop_tokens=(), seed=None, **sampling):
    """(the best reply's ids, [(reward, reply ids)] highest first) of n samples of the prompt."""
    context = min(model.config.block_size, reward_model.config.block_size)
    max_new = max(0, min(max_new_tokens, context - len(prompt_ids) - 1))     # room for the end marker
    stops = list(stop_tokens)
    replies = generate(model, [list(prompt_ids)] * n, max_new, stop_tokens=set(stops), seed=seed, **sampling)
    # A reply shorter than max_new ended on a stop token (generate drops it): put the first one back.
    ended = [stops[0] if stops and len(r) < max_new else None for r in replies]
    rewards = reward_model.score(*scored_rows(prompt_ids, replies, ended))
    ranked = sorted(zip(rewards.tolist(), replies), key=lambda pair: -pair[0])
    return ranked[0][1], ranked
