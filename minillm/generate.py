"""Text generation: a KV cache, greedy / temperature / top-k / top-p sampling, stop tokens, and
batches of prompts of different lengths (left-padded, with a key padding mask).

With the cache, the prompt is run once (prefill) and each new token costs one position;
without it, every step re-runs the whole sequence. Both give the same tokens. The model runs
through DecoderLM.infer: arrays straight to the kernels, no tape, and the head only on the last
position.
"""
import numpy as np


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id per row of logits (B, V).

    temperature 0 is greedy (argmax). Otherwise p = softmax(logits / temperature), restricted to
    the top_k most likely tokens and/or the smallest set whose probability reaches top_p
    (nucleus), renormalised, and sampled with rng.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rng = rng if rng is not None else np.random.default_rng()
    z = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = np.sort(z, axis=-1)[:, -min(top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p          # probability mass ranked above each token
        keep_sorted = before < top_p                               # always keeps the most likely token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random((p.shape[0], 1)) * cdf[:, -1:]          # scaled by the total, so rounding never
    return np.minimum((cdf <= u).sum(axis=-1), p.shape[-1] - 1)   # lands on a zero-probability tail


def _left_pad(prompts):
    """ids (B, L), mask (B, L) True on real tokens, positions (B, L) counting from each row's first token."""
    lengths = np.array([len(p) for p in prompts])
    B, L = len(prompts), int(lengths.max())
    ids = np.zeros((B, L), dtype=np.int64)
    mask = np.zeros((B, L), dtype=bool)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = p
        mask[b, L - len(p):] = True
    positions = np.maximum(np.arange(L)[None, :] - (L - lengths)[:, None], 0)
    return ids, mask, positions


def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
             stop_tokens=(), use_cache=True, on_token=None):
    """Continue each prompt (a list of token-id lists) by up to max_new_tokens tokens.

    Returns one list of new ids per prompt, ending before a stop token (if one came). Generation
    stops at the model's context length. on_token(row, id) is called as each token is chosen.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    V, context = model.config.vocab_size, model.config.block_size
    for p in prompts:
        bad = [t for t in p if not 0 <= t < V]
        if bad:
            raise ValueError(f"generate: token id {bad[0]} is outside the vocabulary [0, {V})")
        if len(p) > context:
            raise ValueError(f"generate: the prompt has {len(p)} tokens, more than the context length {context}")
    ids, mask, positions = _left_pad(prompts)
    B, L = ids.shape
    steps = min(max_new_tokens, context - L)
    rng = np.random.default_rng(seed)
    stop = set(stop_tokens)
    outputs = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    padded = not mask.all()
    was_training = model.training
    model.eval()
    try:
        caches = model.new_caches(B, L + steps, dtype=model.norm_f.weight.dtype) if use_cache else None
        logits = model.infer(ids, positions, mask if padded else None, caches, last_only=True)   # (B, 1, V)
        for step in range(steps):
            token = sample_next(logits[:, -1], temperature, top_k, top_p, rng)      # (B,)
            for b in np.flatnonzero(~done):
                if int(token[b]) in stop:
                    done[b] = True
                    continue
                outputs[b].append(int(token[b]))
                if on_token is not None:
                    on_token(int(b), int(token[b]))
            if done.all() or step == steps - 1:
                break
            next_pos = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((B, 1), dtype=bool)], axis=1)
            if use_cache:
                positions = next_pos
                logits = model.infer(token[:, None], positions, mask if padded else None, caches, last_only=True)
            else:
                ids = np.concatenate([ids, token[:, None]], axis=1)
                positions = np.concatenate([positions, next_pos], axis=1)
                logits = model.infer(ids, positions, mask if padded else None, last_only=True)
    finally:
        model.train(was_training)
    return outputs
