"""T5's relative position bias: one learned number per head and bucket of relative distance,
added to the attention scores (see minillm/kernels/reference/attention_bias.py for the buckets).

The encoder's is bidirectional (keys before and after the query have buckets of their own), the
decoder's causal; each stack has one table, made in its first layer and shared by all of them.
"""
import functools

import numpy as np

from .. import functional as F
from .. import kernels
from .module import Module, Parameter, default_rng


class RelativePositionBias(Module):
    """table: (num_buckets, n_heads).  forward(T, S, offset) -> bias (n_heads, T, S) for queries at
    positions offset..offset+T-1 and keys at 0..S-1 (offset = keys already cached when decoding)."""

    def __init__(self, n_heads, num_buckets=32, max_distance=128, bidirectional=True, init_std=0.02, rng=None,
                 dtype=np.float32):
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.table = Parameter((rng or default_rng()).standard_normal((num_buckets, n_heads)) * init_std, dtype=dtype)

    def forward(self, T, S, offset=0):
        return F.relative_position_bias(self.table, self.buckets(T, S, offset))

    def buckets(self, T, S, offset=0):
        return _buckets(T, S, offset, self.bidirectional, self.num_buckets, self.max_distance)

    def extra_repr(self):
        return (f"buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"{'bidirectional' if self.bidirectional else 'causal'}")


@functools.lru_cache(maxsize=64)
def _buckets(T, S, offset, bidirectional, num_buckets, max_distance):
    """The (T, S) bucket ids, cached: training repeats the same lengths, decoding the same offsets."""
    buckets = kernels.relative_position_buckets(np.arange(offset, offset + T), np.arange(S), bidirectional,
                                                num_buckets, max_distance)
    buckets.flags.writeable = False
    return buckets
