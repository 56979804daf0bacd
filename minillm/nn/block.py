"""The pre-norm transformer block:  x = x + attn(norm(x));  x = x + ffn(norm(x))."""
import numpy as np

from .attention import Attention
from .layers import MLP, Dropout, LayerNorm, RMSNorm, SwiGLU
from .module import Module
from .moe import MoE

NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
ACTIVATIONS = ("gelu", "swiglu")


class TransformerBlock(Module):
    """One pre-norm residual block. GPT-2: norm="layernorm", activation="gelu", bias=True,
    positions=None (learned positions added by the model). Llama: norm="rmsnorm",
    activation="swiglu", positions="rope", n_kv_heads < n_heads for GQA.

    n_experts > 0 makes the feed-forward a Mixture-of-Experts (nn.MoE) of n_experts FFNs of the
    same kind and size, top_k of them per token; its aux_loss / z_loss / stats are on self.ffn."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, d_ff=None, norm="layernorm", activation="gelu",
                 positions=None, causal=True, window=None, bias=True, dropout=0.0, eps=1e-5,
                 rope_theta=10000.0, init_std=0.02, rng=None, dtype=np.float32, n_experts=0, top_k=2,
                 capacity_factor=1.25, renormalize_gates=True):
        if norm not in NORMS:
            raise ValueError(f"TransformerBlock: norm must be one of {list(NORMS)}, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"TransformerBlock: activation must be one of {ACTIVATIONS}, got {activation!r}")
        d_ff = d_ff or 4 * d_model
        self.norm1 = NORMS[norm](d_model, eps, dtype=dtype)
        self.attn = Attention(d_model, n_heads, n_kv_heads, positions, causal, window, rope_theta, bias,
                              init_std, rng, dtype)
        self.norm2 = NORMS[norm](d_model, eps, dtype=dtype)
        if n_experts:
            self.ffn = MoE(d_model, d_ff, n_experts, top_k, capacity_factor, renormalize_gates, activation, bias,
                           init_std, rng, dtype)
        elif activation == "swiglu":
            self.ffn = SwiGLU(d_model, d_ff, init_std, rng, dtype)
        else:
            self.ffn = MLP(d_model, d_ff, bias, init_std, rng, dtype)
        self.dropout = Dropout(dropout, rng=rng)

    def forward(self, x, positions=None, key_padding_mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C). cache: this block's KVCache when generating."""
        x = x + self.dropout(self.attn(self.norm1(x), positions, key_padding_mask, cache))
        return x + self.dropout(self.ffn(self.norm2(x)))
