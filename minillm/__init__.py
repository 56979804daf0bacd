"""minillm: a small, readable, fast engine for transformer language models on the CPU.

    import minillm as mm, minillm.functional as F
    x = mm.tensor(np.random.randn(2, 8).astype(np.float32), requires_grad=True)
    F.gelu(x).sum().backward(); x.grad

Importing minillm loads only the kernel layer (the backend switch and the native extension), so
`import minillm.kernels` or `import minillm.tokenizers` never loads the autograd engine above it
(docs/architecture.md has the layers). The autograd names (Tensor, tensor, Function, no_grad,
is_grad_enabled, concat, stack) are loaded from minillm.autograd on first use by the module
__getattr__ below (PEP 562); the TYPE_CHECKING import says where they come from to readers, type
checkers and editors.
"""
import os
import warnings
from typing import TYPE_CHECKING

from .config import max_threads


def _clamp_omp_num_threads():
    """OpenMP reads OMP_NUM_THREADS when the extension loads, and a value far beyond the machine
    makes it fail to create threads or crash (1,000,000 overflows its stack): clamp it to
    max_threads() first, with a warning. Returns the clamped count, or None if it was fine."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) <= max_threads():
        return None
    os.environ["OMP_NUM_THREADS"] = str(max_threads())
    warnings.warn(f"minillm: OMP_NUM_THREADS={value} is more than 4 x the {os.cpu_count()} CPUs; using "
                  f"{max_threads()}", RuntimeWarning, stacklevel=3)
    return max_threads()


_CLAMPED_THREADS = _clamp_omp_num_threads()

from . import kernels  # noqa: E402 (after OMP_NUM_THREADS is made safe: OpenMP reads it as the extension loads)

if TYPE_CHECKING:
    from .autograd import Function, Tensor, concat, is_grad_enabled, no_grad, stack, tensor  # noqa: F401

__version__ = "0.1.0"

_AUTOGRAD_NAMES = ("Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "concat", "stack")


def __getattr__(name):
    """minillm.<name> for the autograd names: import minillm.autograd once, then keep the name here."""
    if name in _AUTOGRAD_NAMES:
        from . import autograd
        value = getattr(autograd, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minillm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_AUTOGRAD_NAMES))


def build_info():
    """How the native extension was built and what it uses on this machine.

    Keys: version, native (bool), openmp (bool), cpu_simd (the best SIMD path the CPU supports:
    "scalar", "avx2", "avx2-vnni", "avx512" or "avx512-vnni"), simd (the path the kernels use now),
    supported_isas (every path the CPU supports), kernel_paths (the path each kernel family takes now,
    e.g. {"gemm": "avx512", "quant_matmul": "avx512-vnni", ...}), caches (the cache sizes the GEMM
    blocks come from), threads (set_num_threads's count), threads_in_use (what a parallel region uses
    now: fewer while other programs keep the CPUs busy), adaptive_threads, compiler, backend,
    native_kernels.
    """
    info = {"version": __version__, "backend": kernels.get_backend(), "native": kernels.native.AVAILABLE,
            "native_kernels": kernels.native_kernels()}
    C = kernels.native._C
    if C is None:
        info.update(openmp=False, cpu_simd=None, simd=None, supported_isas=[], kernel_paths={}, caches=None,
                    threads=1, threads_in_use=1, adaptive_threads=False, compiler=None,
                    native_error=str(kernels.native.IMPORT_ERROR))
    else:
        info.update(openmp=C.openmp(), cpu_simd=C.cpu_simd(), simd=C.simd_in_use(),
                    supported_isas=C.supported_isas(), kernel_paths=C.kernel_paths(), caches=C.cache_sizes(),
                    threads=C.get_num_threads(), threads_in_use=C.threads_in_use(),
                    adaptive_threads=C.adaptive_threads(), compiler=C.compiler())
    return info


def set_num_threads(n):
    """Threads the native kernels use (OpenMP); OMP_NUM_THREADS sets the default. n must be >= 1;
    more than max_threads() (4 x the CPUs) is clamped to it, with a warning (OpenMP cannot make
    tens of thousands of threads, and more than the cores only slows the kernels down)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > max_threads():
        warnings.warn(f"minillm: set_num_threads({n}) is more than 4 x the {os.cpu_count()} CPUs; using "
                      f"{max_threads()}", RuntimeWarning, stacklevel=2)
        n = max_threads()
    if kernels.native._C is not None:
        kernels.native._C.set_num_threads(n)


def load_pretrained(source, dequantize=False):
    """(model, tokenizer) from a .gguf file, a Hugging Face or minillm checkpoint directory, or the short
    name of a model an installed package ships ("smollm2-135m-instruct"). See minillm/pretrained.py."""
    from .pretrained import load_pretrained as load
    return load(source, dequantize=dequantize)


def get_num_threads():
    return kernels.native._C.get_num_threads() if kernels.native._C is not None else 1


if _CLAMPED_THREADS is not None and kernels.native._C is not None:
    kernels.native._C.set_num_threads(_CLAMPED_THREADS)   # in case OpenMP was loaded (and read it) before us

if kernels.native._C is None and os.environ.get("MINILLM_BACKEND", "").lower() != "numpy":
    warnings.warn(f"minillm: the native extension is not built ({kernels.native.IMPORT_ERROR}); "
                  "running the NumPy reference kernels", RuntimeWarning, stacklevel=2)
elif kernels.native._C is not None and not kernels.native._C.openmp():
    warnings.warn("minillm: the native extension was built without OpenMP; kernels run on one thread",
                  RuntimeWarning, stacklevel=2)

__all__ = ["Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "concat", "stack",
           "build_info", "set_num_threads", "get_num_threads", "kernels", "load_pretrained"]
