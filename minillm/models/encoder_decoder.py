"""An encoder-decoder (sequence-to-sequence) model in T5's style: the encoder reads the whole source
bidirectionally, the decoder writes the target one token at a time, attending causally to what it
wrote and, through cross-attention, to the encoder's output.

    src (B, S) -> embed -> n_layer x EncoderBlock -> norm -> memory (B, S, C)
    tgt (B, T) -> embed -> n_decoder_layer x DecoderBlock(memory) -> norm -> logits (B, T, V)

T5's choices, each a config knob: relative position bias (bucketed, bidirectional in the encoder,
causal in the decoder, one table per stack shared by its layers; or "learned" absolute positions),
RMSNorm without bias before each sub-layer, ReLU or gated-GELU feed-forward, no biases, unscaled
attention (no 1/sqrt(D)), one embedding table for both sides and the tied head, with the decoder's
output scaled by n_embd^-0.5 before the head (T5 v1.0; v1.1 unties the head and drops the scale).

Training follows Hugging Face's T5ForConditionalGeneration: targets are labels (-100 where no loss
is taken), the decoder reads them shifted right behind decoder_start_token_id (pad), -100 read as
pad; the loss is the mean cross-entropy over the labelled positions.
"""
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .. import nn
from ..autograd import Tensor
from ..config import config_from_dict

IGNORE = -100


@dataclass
class Seq2SeqConfig:
    family: str = "encoder_decoder"
    vocab_size: int = 32128
    block_size: int = 512           # the longest source or target the model is run on
    n_layer: int = 2                # encoder blocks
    n_decoder_layer: int | None = None   # None: n_layer
    n_head: int = 4
    n_embd: int = 128
    head_dim: int | None = None     # T5's d_kv; None: n_embd // n_head
    d_ff: int | None = None         # None: 4 * n_embd
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    activation: str = "relu"        # relu | gelu | gelu_tanh | silu
    gated: bool = False             # gated feed-forward (T5 v1.1: gated-gelu = gated + gelu_tanh)
    bias: bool = False
    scaled: bool = False            # False: T5's unscaled attention
    positions: str = "relative"     # relative (T5's bias) | learned (absolute tables, one per side)
    num_buckets: int = 32
    max_distance: int = 128
    dropout: float = 0.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = True
    scale_decoder_output: bool = True   # decoder output * n_embd^-0.5 before the head (T5 v1.0; v1.1: false)
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.family != "encoder_decoder":
            raise ValueError(f"Seq2SeqConfig: family must be 'encoder_decoder', got {self.family!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "num_buckets", "max_distance"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Seq2SeqConfig: {name} must be a positive int, got {getattr(self, name)!r}")
        if self.positions not in ("relative", "learned"):
            raise ValueError(f"Seq2SeqConfig: positions must be 'relative' or 'learned', got {self.positions!r}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"Seq2SeqConfig: {name} {getattr(self, name)} is outside the vocabulary")
        self.block_config()

    @property
    def decoder_layers(self):
        return self.n_decoder_layer or self.n_layer

    def block_config(self):
        return nn.EncoderBlockConfig(d_model=self.n_embd, n_heads=self.n_head, head_dim=self.head_dim, d_ff=self.d_ff,
                                     norm=self.norm, norm_position=self.norm_position, activation=self.activation,
                                     gated=self.gated, bias=self.bias, scaled=self.scaled, dropout=self.dropout,
                                     eps=self.norm_eps, init_std=self.init_std)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        return config_from_dict(cls, values)


class EncoderDecoderModel(nn.Module):
    def __init__(self, config, rng=None, dtype=np.float32):
        c = self.config = config
        rng = rng if rng is not None else nn.default_rng()
        init = dict(init_std=c.init_std, rng=rng, dtype=dtype)
        block = c.block_config()
        H = c.n_head
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, **init)
        self.drop = nn.Dropout(c.dropout, rng=rng)
        relative = c.positions == "relative"
        self.enc_pos = (nn.RelativePositionBias(H, c.num_buckets, c.max_distance, True, rng=rng, dtype=dtype)
                        if relative else nn.Embedding(c.block_size, c.n_embd, **init))
        self.encoder = nn.ModuleList([nn.EncoderBlock(block, rng=rng, dtype=dtype) for _ in range(c.n_layer)])
        self.enc_norm = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype) if c.norm_position == "pre" else None
        self.dec_pos = (nn.RelativePositionBias(H, c.num_buckets, c.max_distance, False, rng=rng, dtype=dtype)
                        if relative else nn.Embedding(c.block_size, c.n_embd, **init))
        self.decoder = nn.ModuleList([nn.DecoderBlock(block, rng=rng, dtype=dtype) for _ in range(c.decoder_layers)])
        self.dec_norm = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype) if c.norm_position == "pre" else None
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False, **init)

    # ---- the encoder

    def encode(self, src, src_mask=None):
        """src: (B, S) ids -> memory (B, S, C). src_mask: (B, S) bool, True on real tokens (default:
        the tokens that are not pad_token_id)."""
        src = self._ids(src, "src")
        B, S = src.shape
        mask = self.source_mask(src, src_mask)
        x = self.wte(src)
        bias = None
        if isinstance(self.enc_pos, nn.RelativePositionBias):
            bias = self.enc_pos(S, S)                                              # (H, S, S)
        else:
            x = x + self.enc_pos(np.arange(S))
        x = self.drop(x)
        for block in self.encoder:
            x = block(x, key_padding_mask=mask, bias=bias)
        return self.drop(self.enc_norm(x) if self.enc_norm is not None else x)

    def source_mask(self, src, src_mask=None):
        """The (B, S) bool mask of real source tokens, or None when nothing is padding."""
        mask = (np.asarray(src) != self.config.pad_token_id) if src_mask is None else np.asarray(src_mask).astype(bool)
        if mask.shape != np.shape(src):
            raise ValueError(f"EncoderDecoderModel: src_mask must have the shape of src {np.shape(src)}, got {mask.shape}")
        return None if mask.all() else mask

    # ---- the decoder

    def cross_kv(self, memory):
        """Each decoder block's cross-attention (k, v) of memory: computed once per generation."""
        return [block.cross.project_kv(memory) for block in self.decoder]

    def new_caches(self, batch, max_len=None, dtype=np.float32):
        """One empty self-attention nn.KVCache per decoder block, for up to max_len target tokens."""
        c = self.config
        D = c.head_dim or c.n_embd // c.n_head
        return [nn.KVCache(batch, c.n_head, max_len or c.block_size, D, dtype) for _ in range(c.decoder_layers)]

    def decode(self, tgt, memory=None, memory_kv=None, src_mask=None, caches=None):
        """tgt: (B, T) decoder input ids -> logits (B, T, V).

        memory: the encoder's output, or memory_kv: its cross_kv (then memory is not needed).
        src_mask: (B, S) bool over the source (None: no padding). caches: new_caches(), when
        generating: tgt then holds only the new tokens, which follow those already cached.
        """
        tgt = self._ids(tgt, "tgt")
        B, T = tgt.shape
        start = caches[0].length if caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"EncoderDecoderModel: target position {start + T - 1} is beyond block_size "
                             f"{self.config.block_size}")
        x = self.wte(tgt)
        bias = None
        if isinstance(self.dec_pos, nn.RelativePositionBias):
            bias = self.dec_pos(T, start + T, offset=start)                     # (H, T, start + T)
        else:
            x = x + self.dec_pos(np.arange(start, start + T))
        x = self.drop(x)
        kvs = memory_kv if memory_kv is not None else [None] * len(self.decoder)
        for i, block in enumerate(self.decoder):
            x = block(x, memory=memory, memory_kv=kvs[i], memory_mask=src_mask, bias=bias,
                      cache=caches[i] if caches else None)
        x = self.drop(self.dec_norm(x) if self.dec_norm is not None else x)
        if self.config.scale_decoder_output:
            x = x * (self.config.n_embd ** -0.5)
        return self.lm_head(x) if self.lm_head is not None else self.wte.attend(x)

    def shift_right(self, labels):
        """Decoder inputs for labels (B, T): decoder_start_token_id, then labels[:, :-1], -100 as pad."""
        labels = np.asarray(labels)
        shifted = np.empty_like(labels)
        shifted[:, 0] = self.config.decoder_start_token_id
        shifted[:, 1:] = labels[:, :-1]
        return np.where(shifted == IGNORE, self.config.pad_token_id, shifted)

    def forward(self, src, targets=None, src_mask=None, decoder_input_ids=None):
        """Teacher-forced logits (B, T, V) of the targets given the source; with targets (B, T) labels
        (-100 where no loss is taken) also the mean cross-entropy over the labelled positions.
        decoder_input_ids: the decoder's inputs, default shift_right(targets)."""
        if targets is None and decoder_input_ids is None:
            raise ValueError("EncoderDecoderModel: give targets (labels) or decoder_input_ids")
        src = self._ids(src, "src")
        mask = self.source_mask(src, src_mask)
        memory = self.encode(src, src_mask)
        tgt_in = self.shift_right(targets) if decoder_input_ids is None else decoder_input_ids
        logits = self.decode(tgt_in, memory=memory, src_mask=mask)
        if targets is None:
            return logits
        targets = np.asarray(targets)
        if targets.shape != logits.shape[:2]:
            raise ValueError(f"EncoderDecoderModel: targets have shape {targets.shape}, decoder inputs "
                             f"{logits.shape[:2]}; they must match")
        B, T = targets.shape
        return logits, F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=IGNORE)

    def _ids(self, ids, name):
        ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"EncoderDecoderModel: {name} must be a (B, L) integer array, got {ids.dtype} {ids.shape}")
        if ids.shape[1] > self.config.block_size:
            raise ValueError(f"EncoderDecoderModel: {name} has {ids.shape[1]} tokens, more than block_size "
                             f"{self.config.block_size}")
        return ids

    def loss(self, src, targets, src_mask=None):
        """forward's loss alone (what the training loop calls)."""
        return self(src, targets, src_mask)[1]

    def moe_stats(self):
        return None

    def num_parameters(self, exclude_embeddings=False):
        n = super().num_parameters()
        if exclude_embeddings:
            n -= self.wte.weight.size
        return n
