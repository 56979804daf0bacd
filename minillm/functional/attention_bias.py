"""Attention with an additive score bias and a free scale (T5), and T5's relative position bias,
as autograd nodes. F.attention(..., bias=, scale=) comes here; see
minillm/kernels/reference/attention_bias.py for the formulas (NumPy on both backends)."""
import numpy as np

from .. import kernels
from ..autograd import Function, Tensor
from ._checks import as_input, check_float, check_int_ids, check_ndim


class AttentionBiasFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, options):
        out, lse = kernels.attention_bias_forward(q, k, v, bias, **options)
        ctx.save(q, k, v, bias, out, lse, options)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, out, lse, options = ctx.saved
        return kernels.attention_bias_backward(dout, q, k, v, out, lse, bias, **options)


def attention_bias(q, k, v, bias, scale, causal, key_padding_mask):
    """softmax(scale * q k^T + bias + mask) v; the arguments are checked by F.attention, which calls this.

    bias: None, or (H, T, S) / (B, H, T, S), a Tensor that may take a gradient. scale: None is 1/sqrt(D).
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    if bias is not None:
        bias = as_input(bias)
        check_float("attention", q=q, bias=bias)
        if tuple(bias.shape) not in ((H, T, S), (B, H, T, S)):
            raise ValueError(f"attention: bias has shape {tuple(bias.shape)}; it must be ({H}, {T}, {S}) or "
                             f"({B}, {H}, {T}, {S}): (batch,) heads, queries, keys")
    if scale is not None and not (isinstance(scale, (int, float, np.floating)) and np.isfinite(scale)):
        raise ValueError(f"attention: scale must be a finite number or None (1 / sqrt(D)), got {scale!r}")
    options = dict(scale=None if scale is None else float(scale), causal=bool(causal),
                   key_padding_mask=key_padding_mask)
    return AttentionBiasFn.apply(q, k, v, bias, options)


class RelativePositionBiasFn(Function):
    @staticmethod
    def forward(ctx, table, buckets):
        ctx.save(buckets, table.shape[0])
        return kernels.relative_position_bias_forward(table, buckets)

    @staticmethod
    def backward(ctx, dbias):
        buckets, num_buckets = ctx.saved
        return kernels.relative_position_bias_backward(dbias, buckets, num_buckets), None


def relative_position_bias(table, buckets):
    """bias[h, i, j] = table[buckets[i, j], h]: T5's learned bias per head and distance bucket.

    table: (num_buckets, H), buckets: (T, S) ints (kernels.relative_position_buckets) -> (H, T, S),
    with the gradient scatter-added back into the table.
    """
    table = as_input(table)
    buckets = np.asarray(buckets.data if isinstance(buckets, Tensor) else buckets)
    check_float("relative_position_bias", table=table)
    check_ndim("relative_position_bias", "table", table, ndim=2)
    check_ndim("relative_position_bias", "buckets", buckets, ndim=2)
    check_int_ids("relative_position_bias", "buckets", buckets, table.shape[0])
    return RelativePositionBiasFn.apply(table, buckets)
