"""Exact parameter counts of the encoder (BERT) and encoder-decoder (T5-style) configs, from the
config alone (no weights built), equal to the model's num_parameters(). C = n_embd, V = vocab_size,
inner = n_head * head_dim (T5's d_kv may differ from C / n_head), F = d_ff (default 4C):

    norm        layernorm: 2C (weight, bias)            rmsnorm: C
    attention   4 C inner weights (wq, wk, wv, wo)      + 3 inner + C biases when bias
    ffn         plain: 2 C F (+ F + C biases)           gated: 3 C F (+ 2F + C biases)
    encoder block   attention + ffn + 2 norms;  decoder block   2 attentions (self, cross) + ffn + 3 norms

    BERT   V C + T C (positions) + type_vocab C + norm + n_layer blocks (+ final norm when pre-LN)
           + MLM head: C C + C (dense) + norm + V (bias; the decoder is the tied token table)
    T5     V C + two position tables (relative: num_buckets * n_head each; learned: T C each)
           + n_layer encoder blocks + n_decoder_layer decoder blocks (+ two final norms when pre-norm)
           + V C when the head is untied

"Non-embedding" drops the token table (BERT: and its position and type tables), as
num_parameters(exclude_embeddings=True) does.
"""


def _norm(c):
    return 2 * c.n_embd if c.norm == "layernorm" else c.n_embd


def _inner(c):
    return c.n_head * (getattr(c, "head_dim", None) or c.n_embd // c.n_head)


def _attention(c):
    C, inner = c.n_embd, _inner(c)
    return 4 * C * inner + ((3 * inner + C) if c.bias else 0)


def _ffn(c):
    C, F = c.n_embd, c.d_ff or 4 * c.n_embd
    if getattr(c, "gated", False):
        return 3 * C * F + ((2 * F + C) if c.bias else 0)
    return 2 * C * F + ((F + C) if c.bias else 0)


def encoder_parameters(c, exclude_embeddings=False):
    """Parameters of EncoderModel(c)."""
    C = c.n_embd
    tables = c.vocab_size * C + c.block_size * C + c.type_vocab_size * C
    n = _norm(c) + c.n_layer * (_attention(c) + _ffn(c) + 2 * _norm(c))
    n += _norm(c) if c.norm_position == "pre" else 0
    n += (C * C + C + _norm(c) + c.vocab_size) if c.mlm_head else 0
    return n if exclude_embeddings else n + tables


def seq2seq_parameters(c, exclude_embeddings=False):
    """Parameters of EncoderDecoderModel(c)."""
    C = c.n_embd
    positions = 2 * (c.num_buckets * c.n_head if c.positions == "relative" else c.block_size * C)
    n = positions + c.n_layer * (_attention(c) + _ffn(c) + 2 * _norm(c))
    n += (c.n_decoder_layer or c.n_layer) * (2 * _attention(c) + _ffn(c) + 3 * _norm(c))
    n += 2 * _norm(c) if c.norm_position == "pre" else 0
    n += 0 if c.tie_embeddings else c.vocab_size * C
    return n if exclude_embeddings else n + c.vocab_size * C


FAMILY_COUNTS = {"encoder": encoder_parameters, "encoder_decoder": seq2seq_parameters}
