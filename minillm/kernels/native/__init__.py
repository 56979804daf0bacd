"""Wrappers over the C++ kernels in `minillm._C`, one module per kernel family, with the same
names and contracts as the reference kernels. Each module lists the kernels it provides in
KERNELS; the backend switch uses them and falls back to the reference for the rest.
"""
try:
    from ... import _C
except ImportError as error:  # the extension was not built
    _C = None
    IMPORT_ERROR = error
else:
    IMPORT_ERROR = None

AVAILABLE = _C is not None
KERNELS = {}   # name -> function

if AVAILABLE:
    from . import activation, attention, linear, norm, quant, softmax

    for _family in (linear, attention, softmax, norm, activation, quant):
        KERNELS.update({name: getattr(_family, name) for name in _family.KERNELS})
