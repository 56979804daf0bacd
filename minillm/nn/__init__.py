"""Modules: parameters with names, layers, attention, the transformer block."""
from .attention import Attention, KVCache
from .block import TransformerBlock
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .module import Module, ModuleList, Parameter, default_rng, manual_seed

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "RMSNorm", "LayerNorm", "Dropout",
           "SwiGLU", "MLP", "Attention", "KVCache", "TransformerBlock", "manual_seed", "default_rng"]
