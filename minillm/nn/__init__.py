"""Modules: parameters with names, layers, attention, Mixture-of-Experts, the transformer block and
its config, the quantized twins of the layers, and the encoder / encoder-decoder pieces (multi-head
attention with a source and a bias, the feed-forward variants, T5's relative position bias, the
encoder and decoder blocks)."""
from .attention import Attention, KVCache
from .caches import LinearAttentionState, SinkKVCache
from .block import TransformerBlock
from .config import BlockConfig
from .encoder_block import DecoderBlock, EncoderBlock, EncoderBlockConfig
from .feedforward import FeedForward
from .layers import MLP, NORMS, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .moe import MoE
from .mha import MultiHeadAttention
from .module import Module, ModuleList, Parameter, default_rng, manual_seed
from .quantized import QuantizedEmbedding, QuantizedLinear, QuantizedSwiGLU, quantize_model
from .relative_position import RelativePositionBias

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "RMSNorm", "LayerNorm", "NORMS", "Dropout",
           "SwiGLU", "MLP", "MoE", "Attention", "KVCache", "LinearAttentionState", "SinkKVCache", "BlockConfig", "TransformerBlock", "manual_seed",
           "default_rng", "QuantizedLinear", "QuantizedSwiGLU", "QuantizedEmbedding", "quantize_model",
           "MultiHeadAttention", "FeedForward", "EncoderBlockConfig", "EncoderBlock", "DecoderBlock",
           "RelativePositionBias"]
