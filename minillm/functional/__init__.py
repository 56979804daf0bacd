"""Layer-sized autograd ops, each one node on the tape with a handwritten backward.

    import minillm.functional as F
    F.linear, F.embedding, F.rms_norm, F.layer_norm, F.gelu, F.relu, F.silu, F.swiglu,
    F.softmax, F.log_softmax, F.cross_entropy, F.dropout, F.rope, F.attention,
    F.relative_position_bias, F.sinusoidal_positions, F.alibi_slopes, F.rope_tables, F.quantized_linear,
    F.fused_linear, F.packed_attention, F.linear_cross_entropy   (fused nodes: q/k/v as one matmul,
    the heads' attention with RoPE on packed projections, an LM head with its loss)
    F.lora_linear, F.lora_quantized_linear (LoRA over a float or quantized base)
    F.RopeScaling, F.rope_frequencies   (RoPE scaling: linear, dynamic NTK, yarn, llama3)
    F.AttentionPattern, F.sparse_attention, F.linear_attention   (long context: docs/long_context.md)

The math lives in `minillm.kernels` (NumPy reference or native); these only check the
arguments and connect forward to backward. Each op is a lowercase function (F.rms_norm) over a
Function class named <Op>Fn (RMSNormFn), which keeps it apart from the nn module (nn.RMSNorm).
"""
from ..autograd import concat, stack
from .activation import dropout, gelu, relu, silu, swiglu
from .attention import alibi_slopes, attention, packed_attention, rope, rope_tables, sinusoidal_positions
from .attention_bias import relative_position_bias
from .linear import embedding, fused_linear, linear
from .lora import dropout_mask, lora_linear, lora_quantized_linear
from .norm import layer_norm, rms_norm
from .quant import quantized_linear
from .rope_scaling import ROPE_TYPES, RopeScaling, rope_frequencies
from .attention_patterns import AttentionPattern
from .sparse_attention import linear_attention, sparse_attention
from .softmax import cross_entropy, linear_cross_entropy, log_softmax, softmax

__all__ = [
    "linear", "embedding", "rms_norm", "layer_norm", "gelu", "silu", "swiglu", "softmax",
    "log_softmax", "cross_entropy", "dropout", "rope", "attention", "sinusoidal_positions",
    "alibi_slopes", "rope_tables", "concat", "stack", "quantized_linear", "fused_linear", "packed_attention",
    "linear_cross_entropy",
    "lora_linear", "lora_quantized_linear", "dropout_mask",
    "RopeScaling", "rope_frequencies", "ROPE_TYPES",
    "AttentionPattern", "sparse_attention", "linear_attention",
    "relu", "relative_position_bias",
]
