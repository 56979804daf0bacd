"""Streaming past the trained context with attention sinks (StreamingLLM, Xiao et al. 2024).

    nll = streaming_nll(model, ids, sinks=(4, 60))        # per-token losses, one token at a time
    new = streaming_generate(model, prompt, 500, sinks=(4, 60))

Each block keeps an nn.SinkKVCache: the first n_sink tokens and the last `window`, positions counted
inside the cache, so the model never sees a position it was not trained on and memory stays constant.
sinks=(0, window) is the plain rolling window; sinks=None in streaming_nll is the ordinary growing
cache with absolute positions (which stops at the context length, or past it for models whose
positions allow it: RoPE), for comparison.
"""
import numpy as np

from .generate import sample_next


def streaming_nll(model, ids, sinks=(4, 60), chunk=1):
    """Negative log-likelihood (nats) of ids[t + 1] given what the cache holds, for t = 0 .. len - 2.

    ids: a 1-D sequence of token ids, as long as you like. sinks=None: a plain KVCache with positions
    0, 1, 2, ... (no limit is enforced, so RoPE models run past their context and can be seen to fail).
    Returns a float64 array of len(ids) - 1 losses."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"streaming_nll: ids must be a 1-D sequence of at least 2 tokens, got shape {ids.shape}")
    was_training = model.training
    model.eval()
    dtype = model.norm_f.weight.dtype
    try:
        if sinks is None:
            caches = [_PlainCache.like(c) for c in model.new_caches(1, 1, dtype=dtype)]
        else:
            caches = model.new_caches(1, dtype=dtype, sinks=sinks)
        losses = []
        for start in range(0, len(ids) - 1, chunk):
            piece = ids[start:min(start + chunk, len(ids) - 1)][None]
            positions = np.arange(caches[0].length, caches[0].length + piece.shape[1])
            logits = _infer_any_position(model, piece, positions, caches)                 # (1, T, V)
            logp = logits[0] - _logsumexp(logits[0])
            targets = ids[start + 1:start + 1 + piece.shape[1]]
            losses.extend(-logp[np.arange(len(targets)), targets])
        return np.asarray(losses, dtype=np.float64)
    finally:
        model.train(was_training)


def streaming_generate(model, prompt, max_new_tokens, sinks=(4, 60), temperature=1.0, top_k=None, top_p=None,
                       seed=None):
    """Continue one prompt (a list of ids) by max_new_tokens, past the context length if asked, through
    sink caches (constant memory). Returns the new ids."""
    if not len(prompt):
        raise ValueError("streaming_generate: the prompt needs at least one token")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        caches = model.new_caches(1, dtype=model.norm_f.weight.dtype, sinks=sinks)
        window = caches[0].capacity
        out = []
        ids = np.asarray(prompt, dtype=np.int64)
        logits = None
        for start in range(0, len(ids), window):                  # a long prompt goes in window-sized pieces
            piece = ids[start:start + window][None]
            logits = model.infer(piece, np.arange(caches[0].length, caches[0].length + piece.shape[1]), None,
                                 caches, last_only=True)
        for _ in range(max_new_tokens):
            token = int(sample_next(logits[:, -1], temperature, top_k, top_p, rng)[0])
            out.append(token)
            logits = model.infer(np.array([[token]]), np.array([caches[0].length]), None, caches, last_only=True)
        return out
    finally:
        model.train(was_training)


def _logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class _PlainCache:
    """A growing KV cache without a size limit (the baseline streaming_nll compares with)."""

    def __init__(self, k):
        self.k = self.v = None
        self._shape = k.shape
        self.length = 0

    @classmethod
    def like(cls, cache):
        return cls(cache.k)

    def append(self, k, v):
        self.k = k if self.k is None else np.concatenate([self.k, k], axis=2)
        self.v = v if self.v is None else np.concatenate([self.v, v], axis=2)
        self.length = self.k.shape[2]
        return self.k, self.v


def _infer_any_position(model, ids, positions, caches):
    """model.infer, without the context-length check on positions (RoPE runs at any position: the
    baseline shows what happens there). Learned position tables still stop at their size."""
    x = model.wte.infer(ids)
    if model.wpe is not None:
        x = x + model.wpe.infer(positions)
    elif model.sinusoids is not None:
        x = x + model.sinusoids[positions]
    for block, cache in zip(model.blocks, caches):
        x = block.infer(x, positions, None, cache)
    x = model.norm_f.infer(x)
    return model.lm_head.infer(x) if model.lm_head is not None else model.wte.infer_attend(x)
