"""Modules: parameters with names, layers, attention, Mixture-of-Experts, the transformer block."""
from .attention import Attention, KVCache
from .block import TransformerBlock
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .moe import MoE
from .module import Module, ModuleList, Parameter, default_rng, manual_seed

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "RMSNorm", "LayerNorm", "Dropout",
           "SwiGLU", "MLP", "MoE", "Attention", "KVCache", "TransformerBlock", "manual_seed", "default_rng"]
