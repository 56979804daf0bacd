"""Exact parameter counts and FLOPs per token of a decoder config, and measured FLOP/s (MFU).

Parameters, from a ModelConfig alone (no weights built), equal to DecoderLM(config).num_parameters():

    block  = norm1 + attention + norm2 + ffn
      norm       layernorm: 2C (weight, bias)      rmsnorm: C
      attention  C (C + 2 kv) + C C  weights,  + (2C + 2 kv) biases when bias;  kv = n_kv_head * C / n_head
      ffn        gelu MLP: 2 C F (+ F + C biases)   swiglu: 3 C F
      MoE block  n_experts * ffn + C * n_experts (the router, no bias)
    total  = V C (token table) + T C (learned positions) + sum(blocks) + final norm + V C (untied head)

"Non-embedding" drops the token and position tables (as num_parameters(exclude_embeddings=True));
"active" counts, per token, top_k experts of each MoE block (plus its router) instead of all of them.

FLOPs per token (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1): a
multiply-add is 2 FLOPs, so a forward pass costs 2 per weight it touches,

    C_forward ~= 2 N + 2 n_layer n_ctx d_attn,        N = non-embedding parameters of the blocks

(the second term is q k^T and attention-weighted v over the n_ctx keys; d_attn = n_head * head_dim
= n_embd here) and training (forward + backward, the backward costing twice the forward) is

    C_train ~= 6 N + 6 n_layer n_ctx d_attn           the "simple" estimate drops the attention: 6 N

N here is Kaplan's: the blocks' weights (and the final norm), without the token/position tables and
without an untied output head; for MoE it is the *active* count. Kaplan's table also lists the
de-embedding 2 n_embd n_vocab, which the paper leaves out of C_forward; `head=True` adds it back
(6 n_embd n_vocab per training token), which is what model FLOPs utilisation counts here because
the logits matmul is real work (on a 65-character vocabulary it is small; on 32k tokens it is not).
"""
import time

import numpy as np


def _moe(config):
    """(n_experts, top_k, moe_every) with dense defaults, for configs from before MoE existed."""
    return getattr(config, "n_experts", 0) or 0, getattr(config, "top_k", 2), getattr(config, "moe_every", 1) or 1


def is_moe_block(config, i):
    n_experts, _, every = _moe(config)
    return n_experts > 0 and (i + 1) % every == 0


def norm_params(config):
    return 2 * config.n_embd if config.norm == "layernorm" else config.n_embd


def attention_params(config):
    C = config.n_embd
    kv = (config.n_kv_head or config.n_head) * (C // config.n_head)
    weights = C * C + 2 * C * kv + C * C                     # wq, wk, wv, wo
    return weights + ((2 * C + 2 * kv) if config.bias else 0)


def ffn_params(config):
    """One dense feed-forward (one expert of an MoE block)."""
    C, F = config.n_embd, config.hidden_size
    if config.activation == "swiglu":
        return 3 * C * F                                      # w_gate, w_up, w_down; never a bias
    return 2 * C * F + ((F + C) if config.bias else 0)        # fc, proj


def block_params(config, i=0, active=False):
    """Parameters of block i; active=True counts only the top_k experts a token goes through."""
    n_experts, top_k, _ = _moe(config)
    ffn = ffn_params(config)
    if is_moe_block(config, i):
        ffn = (top_k if active else n_experts) * ffn + config.n_embd * n_experts
    return 2 * norm_params(config) + attention_params(config) + ffn


def embedding_params(config):
    """The token table, plus the position table with learned positions."""
    return config.vocab_size * config.n_embd + (config.block_size * config.n_embd if config.positions == "learned"
                                                 else 0)


def head_params(config):
    """The output head's own weights: 0 when tied to the token table."""
    return 0 if config.tie_embeddings else config.vocab_size * config.n_embd


def count_parameters(config, exclude_embeddings=False, active=False):
    """Exact parameter count of DecoderLM(config); equal to its num_parameters(exclude_embeddings).

    active=True: per token, with top_k of the n_experts FFNs in each MoE block (equal to the total
    for a dense model). The encoder families' configs are counted by family_counts.py."""
    family = getattr(config, "family", "decoder")
    if family != "decoder":
        from .family_counts import FAMILY_COUNTS
        return FAMILY_COUNTS[family](config, exclude_embeddings)
    n_experts, _, every = _moe(config)
    n_moe = config.n_layer // every if n_experts > 0 else 0           # blocks i with (i + 1) % every == 0
    n = (config.n_layer - n_moe) * block_params(config, 0, active) if n_moe < config.n_layer else 0
    n += n_moe * block_params(config, every - 1, active) + norm_params(config)
    n += head_params(config)
    return n if exclude_embeddings else n + embedding_params(config)


def kaplan_n(config):
    """Kaplan's N: the blocks and the final norm, active experts only; no tables, no untied head."""
    return count_parameters(config, exclude_embeddings=True, active=True) - head_params(config)


def flops_per_token(config, attention=True, head=False, training=True):
    """FLOPs per token, Kaplan et al. 2020 Table 1 (see the module docstring).

    attention=False, head=False: the simple 6 N.  attention=True: 6 N + 6 n_layer n_ctx d_attn.
    head=True adds the logits matmul, 6 n_embd n_vocab.  training=False: the forward alone (a third).
    """
    c = config
    forward = 2 * kaplan_n(c)
    if attention:
        forward += 2 * c.n_layer * c.block_size * c.n_embd
    if head:
        forward += 2 * c.n_embd * c.vocab_size
    return 3 * forward if training else forward


def counts(config):
    """Everything `minillm scaling count` prints, as a dict."""
    return {"params": count_parameters(config),
            "non_embedding_params": count_parameters(config, exclude_embeddings=True),
            "active_params": count_parameters(config, active=True),
            "active_non_embedding_params": count_parameters(config, exclude_embeddings=True, active=True),
            "kaplan_n": kaplan_n(config),
            "flops_per_token_6n": flops_per_token(config, attention=False),
            "flops_per_token": flops_per_token(config),
            "flops_per_token_with_head": flops_per_token(config, head=True)}


def measure_matmul_peak(n=1024, seconds=0.5):
    """This machine's sgemm peak in FLOP/s: the best of repeated n x n x n minillm.kernels.matmul calls
    (the native kernel when built), for about `seconds`. The denominator of model FLOPs utilisation."""
    from .. import kernels
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), dtype=np.float32)
    kernels.matmul(a, b, out=out)                   # warm up the threads and the caches
    best, deadline = float("inf"), time.perf_counter() + seconds
    for _ in range(1000):
        t0 = time.perf_counter()
        kernels.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return 2.0 * n ** 3 / best


def mfu(flops_per_token_, tokens, seconds, peak):
    """(achieved FLOP/s, model FLOPs utilisation): flops_per_token * tokens / seconds, and that over peak."""
    achieved = flops_per_token_ * tokens / seconds
    return achieved, achieved / peak
