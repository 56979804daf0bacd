"""Argument checks shared by the functional ops: clear errors at the Python boundary,
before any kernel (reference or native) touches the arrays."""
import numpy as np

from ..autograd import Tensor


def as_input(value):
    """A Tensor stays a Tensor; anything array-like becomes a NumPy array (a constant)."""
    return value if isinstance(value, Tensor) else np.asarray(value)


def check_float(fn, **named):
    """Every named argument is a floating-point array, and all share one dtype."""
    first = None
    for name, value in named.items():
        if value is None:
            continue
        dtype = value.dtype
        if dtype.kind != "f":                         # np.issubdtype(.., np.floating), minus its overhead
            raise TypeError(f"{fn}: {name} must be a floating-point array, got dtype {dtype}")
        if first is None:
            first = dtype
        elif dtype != first:
            listed = ", ".join(f"{n} {v.dtype}" for n, v in named.items() if v is not None)
            raise TypeError(f"{fn}: arguments must share one dtype, got {listed}; cast them with .astype()")


def check_ndim(fn, name, value, ndim=None, min_ndim=None):
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} dimensions, got shape {value.shape}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{fn}: {name} must have at least {min_ndim} dimension(s), got shape {value.shape}")


def check_last_dim(fn, name, value, size, what):
    if value.shape[-1] != size:
        raise ValueError(f"{fn}: {name} has shape {value.shape}; its last axis must equal {what} ({size})")


def check_int_ids(fn, name, ids, upper):
    """ids are integers in [0, upper)."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{fn}: {name} must be an integer array, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= upper):
        bad = ids[(ids < 0) | (ids >= upper)].flat[0]
        raise ValueError(f"{fn}: {name} contains {bad}, outside [0, {upper})")


def normalize_axis(fn, axis, ndim):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for an array with {ndim} dimension(s)")
    return axis % ndim
