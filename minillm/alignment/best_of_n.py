"""Best-of-n sampling: draw n replies, keep the one a reward model scores highest (`minillm generate
--best-of N --reward-model DIR`).

    best, ranked = best_of_n(model, reward_model, prompt_ids, n, stop_tokens={eos}, seed=0)
    ranked: [(reward, reply ids)] of every sample, highest first

Each sample is scored as the reward model was trained: the prompt, the reply, and the end marker when
the reply ended on a stop token (the row a preference record makes). The reward model must read the
policy's tokens: its tokenizer must be the policy's.
"""
import sys

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


def cmd_best_of(args):
    """`minillm generate --best-of N --reward-model DIR`: print the highest-scoring of N samples."""
    from ..config import UsageError
    from ..pretrained import load_pretrained
    from ..pretrained_cli import encode_prompt
    from .reward_model import load_reward_model
    if args.sinks or args.num_beams != 1 or args.num_samples != 1:
        raise UsageError("--best-of samples N replies and prints one: it does not go with --sinks, --num-beams "
                         "or --num-samples")
    if args.threads:
        from .. import set_num_threads
        set_num_threads(args.threads)
    reward_model, rm_tokenizer = load_reward_model(args.reward_model)
    model, tokenizer = load_pretrained(args.ckpt or args.model)
    if getattr(model.config, "family", "decoder") != "decoder":
        raise UsageError("--best-of samples from a decoder model")
    if tokenizer is None or rm_tokenizer.fingerprint() != tokenizer.fingerprint():
        raise UsageError(f"--reward-model {args.reward_model}: its tokenizer is not the model's, so it cannot "
                         "score the model's replies")
    ids = encode_prompt(tokenizer, args.prompt)
    if not ids:
        raise UsageError("--prompt is empty")
    if len(ids) >= min(model.config.block_size, reward_model.config.block_size):
        raise UsageError(f"the prompt is {len(ids)} tokens, too long for the contexts of the model and the reward model")
    stops = [t for t in [getattr(tokenizer, "eos_token_id", None)] if t is not None]
    if args.stop:
        stops = [int(t) for t in tokenizer.encode_ordinary(args.stop)[:1]] + stops
    best, ranked = best_of_n(model, reward_model, ids, args.best_of, args.max_new_tokens, stops, seed=args.seed,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    print(args.prompt + tokenizer.decode(best))
    print(f"(best of {args.best_of}: reward {ranked[0][0]:.4f}; the others {', '.join(f'{r:.4f}' for r, _ in ranked[1:])})",
          file=sys.stderr)
    return 0
