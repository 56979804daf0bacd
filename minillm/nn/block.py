"""The pre-norm transformer block:  x = x + attn(norm(x));  x = x + ffn(norm(x))."""
import numpy as np

from .attention import Attention
from .config import BlockConfig
from .layers import MLP, NORMS, Dropout, SwiGLU
from .module import Module
from .moe import MoE


class TransformerBlock(Module):
    """One pre-norm residual block, built from a BlockConfig.

    GPT-2: norm="layernorm", activation="gelu", bias=True, positions=None (learned positions
    added by the model). Llama: norm="rmsnorm", activation="swiglu", positions="rope",
    n_kv_heads < n_heads for GQA. n_experts > 0 makes the feed-forward a Mixture-of-Experts
    (nn.MoE) of n_experts FFNs of the same kind and size, top_k of them per token; its aux_loss /
    z_loss / stats are on self.ffn.
    """

    def __init__(self, config, *, rng=None, dtype=np.float32):
        if not isinstance(config, BlockConfig):
            raise TypeError(f"TransformerBlock: config must be an nn.BlockConfig (e.g. nn.BlockConfig(d_model=64, "
                            f"n_heads=4)), got {type(config).__name__}")
        c = self.config = config
        self.norm1 = NORMS[c.norm](c.d_model, c.eps, dtype=dtype)
        self.attn = Attention(c, rng=rng, dtype=dtype)
        self.norm2 = NORMS[c.norm](c.d_model, c.eps, dtype=dtype)
        if c.n_experts:
            self.ffn = MoE(c.d_model, c.hidden_dim, c.n_experts, top_k=c.top_k, capacity_factor=c.capacity_factor,
                           renormalize_gates=c.renormalize_gates, activation=c.activation, bias=c.bias,
                           init_std=c.init_std, rng=rng, dtype=dtype)
        elif c.activation == "swiglu":
            self.ffn = SwiGLU(c.d_model, c.hidden_dim, init_std=c.init_std, rng=rng, dtype=dtype)
        else:
            self.ffn = MLP(c.d_model, c.hidden_dim, bias=c.bias, init_std=c.init_std, rng=rng, dtype=dtype)
        self.dropout = Dropout(c.dropout, rng=rng)

    def forward(self, x, positions=None, key_padding_mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C). cache: this block's KVCache when generating."""
        x = x + self.dropout(self.attn(self.norm1(x), positions, key_padding_mask, cache))
        return x + self.dropout(self.ffn(self.norm2(x)))

    def infer(self, x, positions=None, key_padding_mask=None, cache=None):
        """forward on arrays, without the tape (and without dropout, as in eval mode)."""
        x = x + self.attn.infer(self.norm1.infer(x), positions, key_padding_mask, cache)
        return x + self.ffn.infer(self.norm2.infer(x))
