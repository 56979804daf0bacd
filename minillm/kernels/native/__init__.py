"""Wrappers over the C++ kernels in `minillm._C`, one module per kernel family, with the same
names and contracts as the reference kernels. AVAILABLE says whether the extension is built
(IMPORT_ERROR says why not); KERNELS maps the name of every kernel with a C++ version to its
wrapper. The backend switch (minillm/kernels/__init__.py) calls these wrappers by name.
"""
try:
    from ... import _C
except ImportError as error:  # the extension was not built
    _C = None
    IMPORT_ERROR = error
else:
    IMPORT_ERROR = None

AVAILABLE = _C is not None

from . import activation, attention, gelu_erf, linear, norm, quant, softmax  # noqa: E402 (they read _C above)

KERNELS = {kernel.__name__: kernel for kernel in (
    linear.matmul, linear.linear_forward, linear.linear_backward, linear.swiglu_forward, linear.swiglu_backward,
    attention.attention_forward, attention.attention_backward,
    softmax.softmax_forward, softmax.softmax_backward, softmax.log_softmax_forward, softmax.log_softmax_backward,
    softmax.cross_entropy_forward, softmax.cross_entropy_backward,
    norm.rms_norm_forward, norm.rms_norm_backward, norm.layer_norm_forward, norm.layer_norm_backward,
    activation.gelu_forward, activation.gelu_backward, activation.silu_forward, activation.silu_backward,
    gelu_erf.gelu_erf_forward, gelu_erf.gelu_erf_backward,
    quant.quantize_activations, quant.quant_matmul,
)} if AVAILABLE else {}
