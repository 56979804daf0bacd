"""BlockConfig: the knobs of one transformer block, checked once, read by Attention and TransformerBlock.

    config = BlockConfig(d_model=288, n_heads=6, n_kv_heads=2, norm="rmsnorm", activation="swiglu",
                         positions="rope", bias=False)
    block = TransformerBlock(config, rng=rng)

A model config makes one BlockConfig per block (models.ModelConfig.block_config(i)); Mixture-of-
Experts blocks differ from dense ones by n_experts.
"""
from dataclasses import dataclass

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITIONS = (None, "rope", "alibi")        # None: positions are the model's business (learned, sinusoidal)
ATTENTIONS = ("softmax", "linear")         # linear: elu + 1 features, running sums (F.linear_attention)


@dataclass(frozen=True)
class BlockConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int | None = None   # None: = n_heads (MHA); 1: MQA; a divisor of n_heads in between: GQA
    d_ff: int | None = None         # feed-forward hidden size; None: 4 * d_model
    norm: str = "layernorm"         # layernorm | rmsnorm
    activation: str = "gelu"        # gelu (an MLP) | swiglu
    positions: str | None = None    # rope rotates q and k, alibi biases the scores, None: nothing in the block
    causal: bool = True             # False: bidirectional attention
    window: int | None = None       # sliding-window attention: keys at distance >= window are hidden
    bias: bool = True               # biases in the projections and the MLP
    dropout: float = 0.0            # on the attention and feed-forward outputs, while training
    eps: float = 1e-5               # of the norms
    rope_theta: float = 10000.0
    rope_scaling: object = None     # an F.RopeScaling (linear, dynamic, yarn, llama3), None: plain RoPE
    attention: str = "softmax"      # softmax | linear (F.linear_attention)
    attention_pattern: object = None   # an F.AttentionPattern (dilated, strided, block_sparse), None: dense
    init_std: float = 0.02          # weights start as N(0, init_std^2)
    # Mixture-of-Experts feed-forward (nn.MoE); n_experts = 0 is a dense block and ignores the rest
    n_experts: int = 0
    top_k: int = 2
    capacity_factor: float | None = 1.25
    renormalize_gates: bool = True

    def __post_init__(self):
        for name in ("d_model", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockConfig: {name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"BlockConfig: d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if not isinstance(self.kv_heads, int) or self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise ValueError(f"BlockConfig: n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        if self.norm not in NORMS:
            raise ValueError(f"BlockConfig: norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BlockConfig: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"BlockConfig: positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"BlockConfig: RoPE needs an even head dim, got {self.head_dim} "
                             f"(d_model {self.d_model} / n_heads {self.n_heads})")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"BlockConfig: window must be a positive int or None, got {self.window!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"BlockConfig: attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention_pattern is not None and (self.window is not None or self.attention == "linear"
                                                   or self.positions == "alibi"):
            raise ValueError("BlockConfig: attention_pattern (sparse attention) cannot be combined with window, "
                             "linear attention or ALiBi; put the window in the pattern")
        if self.attention == "linear" and (self.window is not None or self.positions == "alibi"):
            raise ValueError("BlockConfig: linear attention has no window and no ALiBi")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"BlockConfig: dropout must be in [0, 1], got {self.dropout}")
        if not isinstance(self.n_experts, int) or self.n_experts < 0:
            raise ValueError(f"BlockConfig: n_experts must be an int >= 0 (0: dense), got {self.n_experts!r}")

    @property
    def kv_heads(self):
        """Key/value heads: n_kv_heads, or n_heads when it is None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @property
    def hidden_dim(self):
        """The feed-forward's hidden size: d_ff, or 4 * d_model when it is None."""
        return self.d_ff or 4 * self.d_model
