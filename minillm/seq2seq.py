"""Generation with an encoder-decoder model: greedy, sampling and beam search.

The source is encoded once, and each decoder block's cross-attention keys and values of it are
computed once (model.cross_kv) and reused for every new token; the decoder's own keys and values
go to a KV cache, so each step runs one position. The decoder starts from decoder_start_token_id
and a row stops at eos_token_id (not returned).

Beam search keeps num_beams running hypotheses per source, as transformers' does (5.x):
    each step: score(beam + token) = score(beam) + log p(token | beam); the 2 * num_beams best
    candidates over all beams are kept; those ending in EOS (or at the length limit) that rank
    among the first num_beams become finished hypotheses, scored sum log p / length^length_penalty
    (length = generated tokens, EOS included), and the best num_beams unfinished ones run on.
    A source is done when it has num_beams finished hypotheses and its best running score, divided
    by the current length^length_penalty, is no better than its worst finished one.
The best finished hypothesis is returned. length_penalty > 0 favours longer outputs, < 0 shorter.
"""
import numpy as np

from .autograd import Tensor, no_grad
from .generate import sample_next

NEG = -1.0e9            # transformers' "very large negative" score for candidates that may not be chosen


def _pad_sources(sources, pad):
    """ids (B, S) right-padded with pad, mask (B, S) True on real tokens."""
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("generate: every source needs at least one token")
    S = max(len(s) for s in sources)
    ids = np.full((len(sources), S), pad, np.int64)
    mask = np.zeros((len(sources), S), bool)
    for b, s in enumerate(sources):
        ids[b, :len(s)] = s
        mask[b, :len(s)] = True
    return ids, mask


def _check(model, sources, max_new_tokens, num_beams):
    c = model.config
    for s in sources:
        bad = [t for t in s if not 0 <= int(t) < c.vocab_size]
        if bad:
            raise ValueError(f"generate: token id {bad[0]} is outside the vocabulary [0, {c.vocab_size})")
        if len(s) > c.block_size:
            raise ValueError(f"generate: a source has {len(s)} tokens, more than the model's block_size {c.block_size}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"generate: num_beams must be a positive int, got {num_beams!r}")


def generate_seq2seq(model, sources, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                     num_beams=1, length_penalty=1.0, eos_token_id=None):
    """The output ids (a list per source, EOS not included) for sources, a list of token-id lists.

    num_beams 1: greedy (temperature 0) or sampling (temperature, top_k, top_p, seed) as in
    minillm.generate; num_beams > 1: beam search (see the module docstring), deterministic.
    """
    _check(model, sources, max_new_tokens, num_beams)
    c = model.config
    eos = c.eos_token_id if eos_token_id is None else eos_token_id
    steps = min(max_new_tokens, c.block_size)
    src, mask = _pad_sources(sources, c.pad_token_id)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            memory = model.encode(src, mask)
            mask = None if mask.all() else mask
            kv = model.cross_kv(memory)                       # once per generation
            if num_beams == 1:
                return _sample(model, kv, mask, len(sources), steps, eos, temperature, top_k, top_p, seed)
            return _beam_search(model, kv, mask, len(sources), steps, eos, num_beams, length_penalty)
    finally:
        model.train(was_training)


def _sample(model, kv, mask, B, steps, eos, temperature, top_k, top_p, seed):
    rng = np.random.default_rng(seed)
    caches = model.new_caches(B, steps, dtype=model.wte.weight.dtype)
    token = np.full(B, model.config.decoder_start_token_id, np.int64)
    outputs, done = [[] for _ in range(B)], np.zeros(B, bool)
    for _ in range(steps):
        logits = model.decode(token[:, None], memory_kv=kv, src_mask=mask, caches=caches).data[:, -1]
        token = sample_next(logits, temperature, top_k, top_p, rng)
        for b in np.flatnonzero(~done):
            if int(token[b]) == eos:
                done[b] = True
            else:
                outputs[b].append(int(token[b]))
        if done.all():
            break
    return outputs


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _repeat(kv, K):
    """Each source's cross-attention keys and values once per beam (rows b*K .. b*K + K-1)."""
    return [(Tensor(np.repeat(k.data, K, axis=0)), Tensor(np.repeat(v.data, K, axis=0))) for k, v in kv]


def _beam_search(model, kv, mask, B, steps, eos, K, length_penalty):
    kv = _repeat(kv, K)
    mask = None if mask is None else np.repeat(mask, K, axis=0)
    caches = model.new_caches(B * K, steps, dtype=model.wte.weight.dtype)
    running = np.zeros((B, K, 0), np.int64)                          # the running hypotheses' tokens
    running_scores = np.tile(np.array([0.0] + [NEG] * (K - 1), np.float32), (B, 1))
    finished = np.zeros((B, K, steps), np.int64)                     # finished hypotheses, padded
    finished_len = np.zeros((B, K), np.int64)
    finished_scores = np.full((B, K), NEG, np.float32)
    is_finished = np.zeros((B, K), bool)
    open_ = np.ones(B, bool)                                         # can a better hypothesis still come?
    token = np.full(B * K, model.config.decoder_start_token_id, np.int64)
    rows = np.arange(B)[:, None]
    for step in range(steps):
        logits = model.decode(token[:, None], memory_kv=kv, src_mask=mask, caches=caches).data[:, -1]
        logp = _log_softmax(logits.astype(np.float32)).reshape(B, K, -1)
        V = logp.shape[-1]
        total = (logp + running_scores[:, :, None]).reshape(B, K * V)
        top = np.argsort(-total, axis=1, kind="stable")[:, :2 * K]                # (B, 2K) candidates
        top_scores = np.take_along_axis(total, top, axis=1)
        beam, tok = top // V, top % V
        candidates = np.concatenate([running[rows, beam], tok[..., None]], axis=2)   # (B, 2K, step + 1)
        length = step + 1
        hits = (tok == eos) | (length >= steps)
        # the num_beams best candidates that did not stop run on
        keep = np.argsort(-(top_scores + hits * NEG), axis=1, kind="stable")[:, :K]
        running = np.take_along_axis(candidates, keep[..., None], axis=1)
        running_scores = np.take_along_axis(top_scores + hits * NEG, keep, axis=1).astype(np.float32)
        parent = np.take_along_axis(beam, keep, axis=1)                              # (B, K)
        # candidates among the first num_beams that stopped become finished, if they beat one
        new_scores = (top_scores / np.float32(length ** length_penalty)).astype(np.float32)
        just = hits & (np.arange(2 * K) < K)[None, :]
        new_scores = new_scores + (~open_[:, None]) * NEG + (~just) * NEG
        padded = np.zeros((B, 2 * K, steps), np.int64)
        padded[:, :, :length] = candidates
        merged_scores = np.concatenate([finished_scores, new_scores], axis=1)
        best = np.argsort(-merged_scores, axis=1, kind="stable")[:, :K]
        finished = np.take_along_axis(np.concatenate([finished, padded], axis=1), best[..., None], axis=1)
        finished_len = np.take_along_axis(np.concatenate([finished_len, np.full((B, 2 * K), length)], axis=1), best, 1)
        finished_scores = np.take_along_axis(merged_scores, best, axis=1).astype(np.float32)
        is_finished = np.take_along_axis(np.concatenate([is_finished, just], axis=1), best, axis=1)
        # reorder the decoder caches to the running beams' parents, feed their last tokens
        order = (np.arange(B)[:, None] * K + parent).reshape(-1)
        for cache in caches:
            cache.k[:, :, :cache.length] = cache.k[order, :, :cache.length]
            cache.v[:, :, :cache.length] = cache.v[order, :, :cache.length]
        token = running[:, :, -1].reshape(-1)
        worst = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
        best_running = running_scores[:, :1] / np.float32(length ** length_penalty)
        open_ &= np.any(best_running > worst, axis=1)
        if not open_.any() or hits.all():
            break
    out = []
    for b in range(B):
        seq = finished[b, 0, :finished_len[b, 0]].tolist()
        out.append(seq[:-1] if seq and seq[-1] == eos else seq)
    return out


def exact_match(model, data, n=200, seed=0, batch_size=50, num_beams=1, length_penalty=1.0):
    """{"exact_match", "examples", "wrong": a few (source, expected, got)}: greedy (or beam) outputs
    on n held-out examples of a TaskData (minillm/seq2seq_data.py), compared whole with the answer."""
    from .seq2seq_data import draw_examples
    pairs = draw_examples(data.task, np.random.default_rng([seed, 7]), n, data.max_len, "val")
    tok = data.tokenizer
    right, wrong = 0, []
    longest = max(len(data.encode(t)) for _, t in pairs)
    for i in range(0, n, batch_size):
        chunk = pairs[i:i + batch_size]
        outputs = generate_seq2seq(model, [data.encode(s) for s, _ in chunk], max_new_tokens=longest + 2,
                                   num_beams=num_beams, length_penalty=length_penalty)
        for (src, tgt), out in zip(chunk, outputs):
            got = tok.decode(out)
            if got == tgt:
                right += 1
            elif len(wrong) < 5:
                wrong.append((src, tgt, got))
    return {"exact_match": right / n, "examples": n, "wrong": wrong}
