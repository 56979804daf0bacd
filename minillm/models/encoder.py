"""An encoder-only model (BERT): bidirectional attention over the whole input, for understanding
tasks, masked-language-model pretraining and sentence embeddings.

    ids (B, T), token types (B, T) -> word + learned position + token-type embeddings -> norm
        -> n_layer x EncoderBlock (post-norm as BERT, or pre-norm + a final norm)
        -> hidden states (B, T, C)
    MLM head: logits = norm(gelu(h W_t^T + b_t)) E^T + b   (E: the word-embedding table, tied)

Padding is a key padding mask (B, T): padded keys are hidden from every query, so a padded row's
real tokens get the hidden states they get alone. MLM labels are -100 where no loss is taken
(tokens not chosen for prediction), as in Hugging Face; the loss is the mean cross-entropy over
the chosen ones, computed on those rows only.
"""
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .. import nn
from ..config import config_from_dict

IGNORE = -100


@dataclass
class EncoderConfig:
    family: str = "encoder"
    vocab_size: int = 30522
    block_size: int = 512           # position embeddings (the longest input)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int | None = None         # None: 4 * n_embd
    type_vocab_size: int = 2        # segment (token type) embeddings; 0: none
    norm: str = "layernorm"
    norm_position: str = "post"     # post (BERT) | pre (pre-LN: a final norm after the blocks)
    activation: str = "gelu"        # gelu (exact erf, BERT's) | gelu_tanh | relu
    bias: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-12
    init_std: float = 0.02
    mlm_head: bool = True           # the masked-LM head (transform + tied decoder + bias)
    pad_token_id: int = 0

    def __post_init__(self):
        if self.family != "encoder":
            raise ValueError(f"EncoderConfig: family must be 'encoder', got {self.family!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EncoderConfig: {name} must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ValueError(f"EncoderConfig: type_vocab_size must be an int >= 0, got {self.type_vocab_size!r}")
        self.block_config()                                  # checks the rest

    @property
    def hidden_size(self):
        return self.d_ff or 4 * self.n_embd

    def block_config(self):
        return nn.EncoderBlockConfig(d_model=self.n_embd, n_heads=self.n_head, d_ff=self.hidden_size, norm=self.norm,
                                     norm_position=self.norm_position, activation=self.activation, bias=self.bias,
                                     dropout=self.dropout, eps=self.norm_eps, init_std=self.init_std)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        return config_from_dict(cls, values)


class MLMHead(nn.Module):
    """BERT's prediction head: a dense layer, GELU and a norm, then the tied word table and a bias."""

    def __init__(self, c, rng, dtype):
        self.dense = nn.Linear(c.n_embd, c.n_embd, init_std=c.init_std, rng=rng, dtype=dtype)
        self.activation = c.activation
        self.norm = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype)
        self.bias = nn.Parameter(np.zeros(c.vocab_size), dtype=dtype)

    def forward(self, h, table):
        """h: (N, C), table: the word embeddings (V, C) -> logits (N, V)."""
        h = self.norm(nn.feedforward.ACTIVATIONS[self.activation](self.dense(h)))
        return F.linear(h, table, self.bias)


class EncoderModel(nn.Module):
    def __init__(self, config, rng=None, dtype=np.float32):
        c = self.config = config
        rng = rng if rng is not None else nn.default_rng()
        init = dict(init_std=c.init_std, rng=rng, dtype=dtype)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, **init)
        self.wpe = nn.Embedding(c.block_size, c.n_embd, **init)
        self.wtt = nn.Embedding(c.type_vocab_size, c.n_embd, **init) if c.type_vocab_size else None
        self.norm_emb = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype)
        self.drop = nn.Dropout(c.dropout, rng=rng)
        self.blocks = nn.ModuleList([nn.EncoderBlock(c.block_config(), rng=rng, dtype=dtype)
                                     for _ in range(c.n_layer)])
        self.norm_f = nn.NORMS[c.norm](c.n_embd, c.norm_eps, dtype=dtype) if c.norm_position == "pre" else None
        self.mlm = MLMHead(c, rng, dtype) if c.mlm_head else None

    def encode(self, ids, token_type_ids=None, attention_mask=None):
        """ids: (B, T) ints -> hidden states (B, T, C).

        token_type_ids: (B, T) segment ids (default 0). attention_mask: (B, T), 1/True on real
        tokens and 0/False on padding (default: no padding).
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"EncoderModel: ids must be (B, T), got shape {ids.shape}")
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(f"EncoderModel: {T} tokens are more than the {self.config.block_size} positions the model "
                             "has; truncate the input")
        x = self.wte(ids) + self.wpe(np.arange(T))
        if self.wtt is not None:
            types = np.zeros((B, T), np.int64) if token_type_ids is None else np.asarray(token_type_ids)
            if types.shape != (B, T):
                raise ValueError(f"EncoderModel: token_type_ids must have the shape of ids {ids.shape}, got {types.shape}")
            x = x + self.wtt(types)
        x = self.drop(self.norm_emb(x))
        mask = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask).astype(bool)
            if mask.shape != (B, T):
                raise ValueError(f"EncoderModel: attention_mask must have the shape of ids {ids.shape}, got {mask.shape}")
            if mask.all():
                mask = None
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        return self.norm_f(x) if self.norm_f is not None else x

    def mlm_logits(self, hidden):
        """The MLM head on hidden states (..., C) -> (..., V)."""
        if self.mlm is None:
            raise ValueError("EncoderModel: this model has no MLM head (mlm_head = false)")
        return self.mlm(hidden, self.wte.weight)

    def forward(self, ids, targets=None, token_type_ids=None, attention_mask=None):
        """Without targets: MLM logits (B, T, V). With targets (B, T) MLM labels (-100: no loss):
        (logits of the labelled positions (N, V), mean cross-entropy over them)."""
        h = self.encode(ids, token_type_ids, attention_mask)
        if targets is None:
            return self.mlm_logits(h)
        targets = np.asarray(targets)
        if targets.shape != h.shape[:2]:
            raise ValueError(f"EncoderModel: targets must have the shape of ids {h.shape[:2]}, got {targets.shape}")
        rows = np.flatnonzero(targets.reshape(-1) != IGNORE)
        if not len(rows):
            raise ValueError("EncoderModel: no position has a label (every target is -100)")
        logits = self.mlm_logits(h.reshape(-1, h.shape[-1])[rows])                     # (N, V)
        return logits, F.cross_entropy(logits, targets.reshape(-1)[rows])

    def loss(self, ids, targets, token_type_ids=None, attention_mask=None):
        """forward's MLM loss alone (what the training loop calls)."""
        return self(ids, targets, token_type_ids, attention_mask)[1]

    def moe_stats(self):
        return None

    def num_parameters(self, exclude_embeddings=False):
        n = super().num_parameters()
        if exclude_embeddings:
            n -= sum(t.weight.size for t in (self.wte, self.wpe, self.wtt) if t is not None)
        return n
