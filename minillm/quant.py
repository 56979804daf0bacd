"""The old path of quantization, kept so `from minillm.quant import quantize_model, load_quantized`
works. The modules and quantize_model live in minillm/nn/quantized.py, the checkpoint workflow
(quantize_checkpoint, load_quantized) in minillm/quantize.py; new code imports from there."""
from .kernels.reference.quant import GROUP, SCHEMES
from .nn.quantized import (
    INT4, QuantizedEmbedding, QuantizedLinear, QuantizedSwiGLU, QuantizedWeights, check_quantizable,
    check_quantized_weights, model_nbytes, quantize_model,
)
from .quantize import load_quantized, quantize_checkpoint

__all__ = ["GROUP", "SCHEMES", "INT4", "QuantizedWeights", "QuantizedLinear", "QuantizedSwiGLU", "QuantizedEmbedding",
           "check_quantizable", "check_quantized_weights", "model_nbytes", "quantize_model", "load_quantized",
           "quantize_checkpoint"]
