"""The keys and values of every running sequence, in blocks: one pool per layer, read through block tables.

k[layer], v[layer]: (num_blocks, Hkv, block_size, D). A step packs its N new tokens in one row
(prefill chunks and decode tokens of several sequences); StepLayout says where each one's key and
value go (its block and slot) and which sequence and position it is. layers(layout) gives one
PagedLayer per attention layer: the `cache` DecoderLM.infer hands to each block, whose attend()
writes the new keys and values and runs kernels.paged_attention_forward over the blocks.
"""
from dataclasses import dataclass

import numpy as np

from .. import kernels


@dataclass
class StepLayout:
    """Where a step's N packed tokens are: block and slot of each new key, sequence, position."""
    slot_blocks: np.ndarray    # (N,) int64: the block each token's key and value are written to
    slot_offsets: np.ndarray   # (N,) int64: the slot in that block (position % block_size)
    block_tables: np.ndarray   # (S, M) int64: the blocks of each sequence of the step, in order (padded)
    seq_of: np.ndarray         # (N,) int64: the row of block_tables each token belongs to
    positions: np.ndarray      # (N,) int64: each token's position in its sequence


class PagedKVCache:
    """num_blocks blocks of block_size positions for each of n_layer attention layers."""

    def __init__(self, n_layer, num_blocks, block_size, n_kv_heads, head_dim, dtype=np.float32):
        shape = (num_blocks, n_kv_heads, block_size, head_dim)
        self.block_size = block_size
        self.k = [np.zeros(shape, dtype) for _ in range(n_layer)]
        self.v = [np.zeros(shape, dtype) for _ in range(n_layer)]

    @classmethod
    def for_model(cls, model, num_blocks, block_size):
        """Blocks shaped for model's attention layers, in the dtype of its float parameters."""
        c = model.config
        dtype = next((p.data.dtype for p in model.parameters() if p.data.dtype.kind == "f"), np.float32)
        return cls(c.n_layer, num_blocks, block_size, c.n_kv_head or c.n_head, c.n_embd // c.n_head, dtype)

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.k + self.v)

    def layers(self, layout):
        """One PagedLayer per layer for this step's layout (the caches DecoderLM.infer takes)."""
        return [PagedLayer(k, v, layout) for k, v in zip(self.k, self.v)]


class PagedLayer:
    """One layer's blocks during one step, as the `cache` of nn.Attention.infer."""

    def __init__(self, k_pages, v_pages, layout):
        self.k_pages, self.v_pages, self.layout = k_pages, v_pages, layout

    def attend(self, q, k, v, causal, window, alibi_slopes, key_padding_mask):
        """q (1, H, N, D), k, v (1, Hkv, N, D) of the packed tokens -> attention out (1, H, N, D).

        The new keys and values are stored first, so each token also sees itself."""
        if not causal or key_padding_mask is not None:
            raise ValueError("PagedLayer: the paged cache serves causal decoders without padding masks")
        if q.shape[0] != 1:
            raise ValueError(f"PagedLayer: the step's tokens come packed in one row, got q of shape {q.shape}")
        lay = self.layout
        self.k_pages[lay.slot_blocks, :, lay.slot_offsets] = k[0].transpose(1, 0, 2)     # (N, Hkv, D)
        self.v_pages[lay.slot_blocks, :, lay.slot_offsets] = v[0].transpose(1, 0, 2)
        y = kernels.paged_attention_forward(np.ascontiguousarray(q[0].transpose(1, 0, 2)), self.k_pages,
                                            self.v_pages, lay.block_tables, lay.seq_of, lay.positions,
                                            window, alibi_slopes)                     # (N, H, D)
        return y.transpose(1, 0, 2)[None]
