"""Modules: parameters with names, layers, attention, Mixture-of-Experts, the transformer block and
its config, and the quantized twins of the layers."""
from .attention import Attention, KVCache
from .caches import LinearAttentionState, SinkKVCache
from .block import TransformerBlock
from .config import BlockConfig
from .layers import MLP, NORMS, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .moe import MoE
from .module import Module, ModuleList, Parameter, default_rng, manual_seed
from .quantized import QuantizedEmbedding, QuantizedLinear, QuantizedSwiGLU, quantize_model

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "RMSNorm", "LayerNorm", "NORMS", "Dropout",
           "SwiGLU", "MLP", "MoE", "Attention", "KVCache", "LinearAttentionState", "SinkKVCache", "BlockConfig", "TransformerBlock", "manual_seed",
           "default_rng", "QuantizedLinear", "QuantizedSwiGLU", "QuantizedEmbedding", "quantize_model"]
