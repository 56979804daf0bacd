"""The kernel backend switch.

`minillm.kernels.<name>` resolves to the native kernel when the extension is built and has
it, else to the NumPy reference. `MINILLM_BACKEND=numpy` (or `set_backend("numpy")`) runs
everything on the references. Callers look names up at call time (`kernels.softmax_forward(x)`),
so switching takes effect at once.
"""
import os

from . import native, reference

BACKENDS = ("native", "numpy")
_backend = None


def set_backend(name):
    """Pick "native" (C++ where available, reference elsewhere) or "numpy" (references only)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"set_backend: backend must be one of {BACKENDS}, got {name!r}")
    if name == "native" and not native.AVAILABLE:
        raise RuntimeError(f"set_backend: the native extension minillm._C is not built ({native.IMPORT_ERROR})")
    for kernel in reference.KERNELS:
        globals()[kernel] = getattr(reference, kernel)
    if name == "native":
        globals().update(native.KERNELS)
    _backend = name


def get_backend():
    return _backend


def native_kernels():
    """Names of the kernels the native backend runs in C++ (the rest use the reference)."""
    return sorted(native.KERNELS)


_requested = os.environ.get("MINILLM_BACKEND", "native" if native.AVAILABLE else "numpy").lower()
if _requested not in BACKENDS:
    raise ValueError(f"MINILLM_BACKEND must be one of {BACKENDS}, got {_requested!r}")
set_backend(_requested if native.AVAILABLE or _requested == "numpy" else "numpy")
