"""minillm: a small, readable, fast engine for transformer language models on the CPU.

    import minillm as mm, minillm.functional as F
    x = mm.tensor(np.random.randn(2, 8).astype(np.float32), requires_grad=True)
    F.gelu(x).sum().backward(); x.grad
"""
import os
import warnings

from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor  # noqa: I001 (tensor before ops)
from .ops import concat, stack
from . import kernels

__version__ = "0.1.0"


def build_info():
    """How the native extension was built and what it uses on this machine.

    Keys: version, native (bool), openmp (bool), cpu_simd ("avx2+fma" or "scalar": what the CPU
    supports), simd (what the kernels use now), threads, compiler, backend, native_kernels.
    """
    info = {"version": __version__, "backend": kernels.get_backend(), "native": kernels.native.AVAILABLE,
            "native_kernels": kernels.native_kernels()}
    C = kernels.native._C
    if C is None:
        info.update(openmp=False, cpu_simd=None, simd=None, threads=1, compiler=None,
                    native_error=str(kernels.native.IMPORT_ERROR))
    else:
        info.update(openmp=C.openmp(), cpu_simd=C.cpu_simd(), simd=C.simd_in_use(),
                    threads=C.get_num_threads(), compiler=C.compiler())
    return info


def set_num_threads(n):
    """Threads the native kernels use (OpenMP); OMP_NUM_THREADS sets the default."""
    if kernels.native._C is not None:
        kernels.native._C.set_num_threads(int(n))


def load_pretrained(source, dequantize=False):
    """(model, tokenizer) from a .gguf file, a Hugging Face or minillm checkpoint directory, or the short
    name of a model an installed package ships ("smollm2-135m-instruct"). See minillm.io.load_pretrained."""
    from .io import load_pretrained as load
    return load(source, dequantize=dequantize)


def get_num_threads():
    return kernels.native._C.get_num_threads() if kernels.native._C is not None else 1


if kernels.native._C is None and os.environ.get("MINILLM_BACKEND", "").lower() != "numpy":
    warnings.warn(f"minillm: the native extension is not built ({kernels.native.IMPORT_ERROR}); "
                  "running the NumPy reference kernels", RuntimeWarning, stacklevel=2)
elif kernels.native._C is not None and not kernels.native._C.openmp():
    warnings.warn("minillm: the native extension was built without OpenMP; kernels run on one thread",
                  RuntimeWarning, stacklevel=2)

__all__ = ["Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "concat", "stack",
           "build_info", "set_num_threads", "get_num_threads", "kernels", "load_pretrained"]
