"""Wrappers over the C++ kernels in `minillm._C`, one module per kernel family, with the same
names and contracts as the reference kernels. AVAILABLE says whether the extension is built
(IMPORT_ERROR says why not); KERNELS maps the name of every kernel with a C++ version to its
wrapper. The backend switch (minillm/kernels/__init__.py) calls these wrappers by name.

The OpenMP wait policy. GNU OpenMP's threads spin 300,000 times (about 10 ms on a recent x86 CPU)
at each barrier and between regions before they sleep, so when another program takes a core, every
parallel region waits that long for its descheduled partner: on 2 cores one competing process made
training 80x slower. Unless the user has chosen a policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT), the
extension is loaded with GOMP_SPINCOUNT=1000 (about 40 us: back-to-back kernels still find their
threads awake), and the environment is restored right after, so neither PyTorch's own OpenMP nor a
child process inherits it. It only takes effect if libgomp is not loaded yet (another library loaded
it first: its policy stays); the kernels also use fewer threads while the machine is busy (load.cpp).
docs/performance.md has the measurements.
"""
import os

SPIN_COUNT = "1000"   # iterations GNU OpenMP spins before sleeping, unless the user chose a policy


def _load_extension():
    """Import minillm._C with the wait policy above; the environment is restored afterwards."""
    chosen = any(name in os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    if not chosen:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        from ... import _C as extension
    finally:
        if not chosen:
            del os.environ["GOMP_SPINCOUNT"]
    return extension


try:
    _C = _load_extension()
except ImportError as error:  # the extension was not built
    _C = None
    IMPORT_ERROR = error
else:
    IMPORT_ERROR = None

AVAILABLE = _C is not None

from . import activation, attention, gelu_erf, kv_attention, linear, nf4, norm, optim, paged_attention, quant, rope, softmax  # noqa: E402 (they read _C above)
from . import linear_attention, sparse_attention  # noqa: E402

KERNELS = {kernel.__name__: kernel for kernel in (
    linear.matmul, linear.linear_forward, linear.linear_backward, linear.swiglu_forward, linear.swiglu_backward,
    attention.attention_forward, attention.attention_backward,
    softmax.softmax_forward, softmax.softmax_backward, softmax.log_softmax_forward, softmax.log_softmax_backward,
    softmax.cross_entropy_forward, softmax.cross_entropy_backward,
    norm.rms_norm_forward, norm.rms_norm_backward, norm.layer_norm_forward, norm.layer_norm_backward,
    activation.gelu_forward, activation.gelu_backward, activation.silu_forward, activation.silu_backward,
    gelu_erf.gelu_erf_forward, gelu_erf.gelu_erf_backward,
    quant.quantize_activations, quant.quant_matmul,
    rope.rope_forward, rope.rope_backward, kv_attention.kv_attention_forward, paged_attention.paged_attention_forward,
    optim.adamw_step,
    nf4.dequantize_nf4, nf4.nf4_matmul,
    sparse_attention.sparse_attention_forward, sparse_attention.sparse_attention_backward,
    linear_attention.linear_attention_forward, linear_attention.linear_attention_backward,
)} if AVAILABLE else {}
