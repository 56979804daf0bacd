"""NumPy reference kernels: `*_forward` / `*_backward` pairs that read like the equations.

Each docstring carries the formula and the result of its backward's derivation. The native
kernels in `minillm._C` must equal these (tests hold them to it).
"""
from .activation import (
    dropout_backward, dropout_forward, gelu_backward, gelu_forward, silu_backward, silu_forward,
    swiglu_backward, swiglu_forward,
)
from .attention import attention_backward, attention_forward, visible_keys
from .attention_bias import (
    attention_bias_backward, attention_bias_forward, relative_position_bias_backward, relative_position_bias_forward,
    relative_position_buckets,
)
from .gelu_erf import gelu_erf_backward, gelu_erf_forward, relu_backward, relu_forward
from .kv_attention import kv_attention_forward
from .linear import embedding_backward, embedding_forward, linear_backward, linear_forward, matmul
from .nf4 import dequantize_nf4, nf4_matmul, quantize_nf4
from .linear_attention import linear_attention_backward, linear_attention_forward
from .norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward
from .optim import adamw_step
from .paged_attention import paged_attention_forward
from .positions import alibi_slopes, sinusoidal_positions
from .quant import dequantize_weights, quant_matmul, quantize_activations, quantize_weights
from .rope import rope_angles, rope_backward, rope_forward
from .sparse_attention import sparse_attention_backward, sparse_attention_forward
from .softmax import (
    cross_entropy_backward, cross_entropy_forward, log_softmax_backward, log_softmax_forward,
    softmax_backward, softmax_forward,
)

# Every kernel the backend switch (minillm/kernels/__init__.py) provides; each has a reference here.
KERNELS = [
    "matmul", "linear_forward", "linear_backward", "embedding_forward", "embedding_backward",
    "rms_norm_forward", "rms_norm_backward", "layer_norm_forward", "layer_norm_backward",
    "gelu_forward", "gelu_backward", "silu_forward", "silu_backward",
    "swiglu_forward", "swiglu_backward", "dropout_forward", "dropout_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "rope_angles", "rope_forward", "rope_backward",
    "attention_forward", "attention_backward", "kv_attention_forward", "paged_attention_forward",
    "sparse_attention_forward", "sparse_attention_backward", "linear_attention_forward", "linear_attention_backward",
    "adamw_step",
    "gelu_erf_forward", "gelu_erf_backward", "relu_forward", "relu_backward",
    "attention_bias_forward", "attention_bias_backward", "relative_position_buckets",
    "relative_position_bias_forward", "relative_position_bias_backward",
    "quantize_weights", "dequantize_weights", "quantize_activations", "quant_matmul",
    "quantize_nf4", "dequantize_nf4", "nf4_matmul",
]
