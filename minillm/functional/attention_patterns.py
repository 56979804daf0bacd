"""Sparse attention patterns: which keys each query sees, as lists (CSR) whose size is the visible pairs.

Query i of T sits at position p = S - T + i among S keys (as in F.attention); key j at position j.
Every pattern is causal (j <= p) unless causal=False, and n_global first tokens are seen by every
query (and, without causality, see every key), as Longformer's and BigBird's global tokens:

- dilated (Longformer, Beltagy et al. 2020): keys at distances 0, d, 2d, ..., (window - 1) d
  (both sides when not causal): a window that covers window * dilation positions with window keys.
- strided (Sparse Transformer, Child et al. 2019, the "strided" pattern): the last `stride` positions
  (p - j < stride) and every stride-th before ((p - j) % stride == 0): about 2 sqrt(T) keys at stride sqrt(T).
- block_sparse (BigBird, Zaheer et al. 2020): positions cut in blocks of `block`; query block a sees key
  block c when |a - c| <= local_blocks (a sliding window of blocks), when c < global_blocks (or a <
  global_blocks without causality), or when c is one of n_random blocks drawn for a (seeded, among
  the blocks it may see).

AttentionPattern.mask(T, S) is the dense bool (T, S) of the definition (the references' mask and the
tests' truth); .indices(T, S) the same pattern as (indptr (T + 1,), indices) int64 lists, made without a
T x S array, which the native kernel walks.
"""
import functools
from dataclasses import dataclass

import numpy as np

KINDS = ("dilated", "strided", "block_sparse")


@dataclass(frozen=True)
class AttentionPattern:
    kind: str
    window: int = 64            # dilated: keys per side
    dilation: int = 1           # dilated: distance between them
    stride: int = 64            # strided
    block: int = 16             # block_sparse: block size
    local_blocks: int = 1       # block_sparse: neighbouring blocks on each side
    global_blocks: int = 1      # block_sparse
    n_random: int = 0           # block_sparse: random key blocks per query block
    seed: int = 0
    n_global: int = 0           # global tokens (every pattern)
    causal: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AttentionPattern: kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name in ("window", "dilation", "stride", "block"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AttentionPattern: {name} must be a positive int, got {value!r}")
        for name in ("local_blocks", "global_blocks", "n_random", "n_global", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"AttentionPattern: {name} must be an int >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values, where="attention_pattern"):
        """From a config's {"kind": "dilated", "window": 64, "dilation": 2, ...}; unknown keys are refused."""
        if isinstance(values, AttentionPattern) or values is None:
            return values
        if not isinstance(values, dict) or "kind" not in values:
            raise ValueError(f"{where}: must be an object with a kind ({list(KINDS)}), got {values!r}")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def mask(self, T, S):
        """bool (T, S): True where query i sees key j, straight from the definition."""
        p = np.arange(S - T, S)[:, None]
        j = np.arange(S)[None, :]
        dist = p - j if self.causal else np.abs(p - j)
        if self.kind == "dilated":
            seen = (dist % self.dilation == 0) & (dist // self.dilation < self.window)
        elif self.kind == "strided":
            seen = (dist < self.stride) | (dist % self.stride == 0)
        else:
            a, c = p // self.block, j // self.block
            seen = np.abs(a - c) <= self.local_blocks
            seen |= c < self.global_blocks
            if not self.causal:
                seen |= a < self.global_blocks
            for qa, blocks in self._random_blocks(S).items():
                seen |= (a == qa) & np.isin(c, blocks)
        seen |= j < self.n_global
        if not self.causal:
            seen |= p < self.n_global
        else:
            seen &= dist >= 0
        return seen

    def _random_blocks(self, S):
        """{query block: its random key blocks}, drawn once per S from the seed (the same for mask and indices)."""
        if not self.n_random:
            return {}
        rng = np.random.default_rng(self.seed)
        n_blocks = -(-S // self.block)
        out = {}
        for a in range(n_blocks):
            allowed = np.arange(a + 1 if self.causal else n_blocks)
            out[a] = np.sort(rng.choice(allowed, size=min(self.n_random, len(allowed)), replace=False))
        return out

    def indices(self, T, S):
        """(indptr (T + 1,), indices (nnz,)) int64, each query's keys increasing; cached (read-only)."""
        return _indices(self, int(T), int(S))

    def visible_pairs(self, T, S):
        return int(self.indices(T, S)[0][-1])


def _row_candidates(pattern, p, S):
    """(T, K) key candidates per query (-1: none), K bounded by the pattern, not by S."""
    P = pattern
    if len(p) == 0:
        return np.empty((0, 0), dtype=np.int64)
    sign = (1,) if P.causal else (1, -1)
    if P.kind == "dilated":
        offsets = np.concatenate([s * np.arange(P.window) * P.dilation for s in sign])
        cands = p[:, None] - offsets[None, :]
    elif P.kind == "strided":
        local = np.arange(P.stride)
        far = np.arange(0, S + 1, P.stride)
        offsets = np.concatenate([s * o for s in sign for o in (local, far)])
        cands = p[:, None] - offsets[None, :]
    else:
        b = P.block
        a = p // b
        rel = np.arange(-P.local_blocks, P.local_blocks + 1)
        blocks = [a[:, None] + rel[None, :], np.broadcast_to(np.arange(P.global_blocks), (len(p), P.global_blocks))]
        randoms = P._random_blocks(S)
        if randoms:
            width = max(len(v) for v in randoms.values())
            table = np.full((max(randoms) + 1, width), -10 ** 9, dtype=np.int64)
            for qa, v in randoms.items():
                table[qa, :len(v)] = v
            blocks.append(table[a])
        blocks = np.concatenate(blocks, axis=1)                            # (T, nb) key blocks
        cands = (blocks[:, :, None] * b + np.arange(b)[None, None, :]).reshape(len(p), -1)
        cands = np.where(blocks.repeat(b, axis=1) < 0, -1, cands)
    cands = np.concatenate([cands, np.broadcast_to(np.arange(min(P.n_global, S)), (len(p), min(P.n_global, S)))], 1)
    valid = (cands >= 0) & (cands < S)
    if P.causal:
        valid &= cands <= p[:, None]
    return np.where(valid, cands, -1)


@functools.lru_cache(maxsize=32)
def _indices(pattern, T, S):
    p = np.arange(S - T, S, dtype=np.int64)
    every = np.zeros(T, dtype=bool)                                # global queries see every key
    if not pattern.causal:
        every = p < pattern.n_global
        if pattern.kind == "block_sparse":
            every |= p // pattern.block < pattern.global_blocks
    cands = np.sort(_row_candidates(pattern, p[~every], S), axis=1)
    keep = cands >= 0
    keep[:, 1:] &= cands[:, 1:] != cands[:, :-1]                   # each key once
    kept = keep.sum(axis=1)                                        # per sparse row
    counts = np.full(T, S, dtype=np.int64)
    counts[~every] = kept
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.empty(indptr[-1], dtype=np.int64)
    row = np.repeat(np.arange(len(kept)), kept)                    # the sparse row of each kept key
    within = np.arange(len(row)) - np.repeat(np.cumsum(kept) - kept, kept)
    indices[indptr[np.flatnonzero(~every)][row] + within] = cands[keep]   # row by row, increasing
    for i in np.flatnonzero(every):
        indices[indptr[i]:indptr[i + 1]] = np.arange(S)
    indptr.flags.writeable = indices.flags.writeable = False
    return indptr, indices
