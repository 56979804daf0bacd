"""Tensor's operators and array methods, each one op of ops.py (one node on the tape).

    a + b, a - b, a * b, a / b, -a, a ** p, a @ b, a[index]       (and the reflected forms)
    a.sum(axis), a.mean(axis), a.max(axis), a.exp(), a.log(), a.tanh()
    a.reshape(*shape), a.view(*shape), a.transpose(*axes), a.T, a.astype(dtype)

Why they are attached here instead of being written in Tensor's class body: the ops are Functions,
and Function.apply makes Tensors, so ops.py must import engine.py; if engine.py imported the ops
back, the two modules would form an import circle. So engine.py defines Tensor without them, ops.py
builds on engine.py, and this module, which minillm.autograd imports, copies the methods of
TensorMethods onto Tensor, once, in attach(). They are then ordinary methods of Tensor: `a + b`
costs what it would if the method were written in the class (one lookup, then AddFn.apply).
"""
import types

import numpy as np

from .engine import Tensor
from .ops import (
    AddFn, CastFn, DivFn, ExpFn, GetItemFn, LogFn, MatMulFn, MaxFn, MeanFn, MulFn, NegFn, PowFn, PowTensorFn,
    ReshapeFn, SubFn, SumFn, TanhFn, TransposeFn,
)


def _wrap(value, like):
    """Turn a Python or NumPy scalar/array operand into a constant Tensor of like's dtype."""
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        if np.issubdtype(like.dtype, np.floating):
            array = array.astype(like.dtype)
    return Tensor(array)


def _check_axis(fn, axis, ndim):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for {ndim} dimension(s)")
    return int(axis) % ndim


class TensorMethods:
    """The methods attach() copies onto Tensor (written as a class so they read as methods)."""

    # ----- arithmetic

    def __add__(self, other):
        return AddFn.apply(self, _wrap(other, self))

    def __radd__(self, other):
        return AddFn.apply(_wrap(other, self), self)

    def __sub__(self, other):
        return SubFn.apply(self, _wrap(other, self))

    def __rsub__(self, other):
        return SubFn.apply(_wrap(other, self), self)

    def __mul__(self, other):
        return MulFn.apply(self, _wrap(other, self))

    def __rmul__(self, other):
        return MulFn.apply(_wrap(other, self), self)

    def __truediv__(self, other):
        return DivFn.apply(self, _wrap(other, self))

    def __rtruediv__(self, other):
        return DivFn.apply(_wrap(other, self), self)

    def __neg__(self):
        return NegFn.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return PowTensorFn.apply(self, exponent)
        return PowFn.apply(self, exponent=exponent)

    def __matmul__(self, other):
        return MatMulFn.apply(self, _wrap(other, self))

    def __rmatmul__(self, other):
        return MatMulFn.apply(_wrap(other, self), self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        return GetItemFn.apply(self, index=index)

    # ----- reductions and elementwise functions

    def sum(self, axis=None, keepdims=False):
        return SumFn.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return MeanFn.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return MaxFn.apply(self, axis=axis, keepdims=keepdims)

    def exp(self):
        return ExpFn.apply(self)

    def log(self):
        return LogFn.apply(self)

    def tanh(self):
        return TanhFn.apply(self)

    def astype(self, dtype):
        return CastFn.apply(self, dtype=np.dtype(dtype))

    # ----- shapes

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ReshapeFn.apply(self, shape=shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def transpose(self, *axes):
        """With no arguments reverse the axes; with two ints swap those two (like torch);
        with a tuple, permute like np.transpose."""
        if len(axes) == 2 and all(isinstance(a, (int, np.integer)) for a in axes):
            a, b = (_check_axis("transpose", ax, self.ndim) for ax in axes)
            perm = list(range(self.ndim))
            perm[a], perm[b] = perm[b], perm[a]
            axes = tuple(perm)
        elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(_check_axis("transpose", ax, self.ndim) for ax in axes[0])
        elif axes:
            axes = tuple(_check_axis("transpose", ax, self.ndim) for ax in axes)
        if axes and sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: {axes} is not a permutation of the {self.ndim} axes of shape {self.shape}")
        return TransposeFn.apply(self, axes=axes or None)

    @property
    def T(self):
        return TransposeFn.apply(self, axes=None)


def attach():
    """Give Tensor the methods of TensorMethods (minillm.autograd calls this once, on import)."""
    for name, method in vars(TensorMethods).items():
        if isinstance(method, (types.FunctionType, property)):
            if isinstance(method, types.FunctionType):
                method.__qualname__ = f"Tensor.{name}"     # tracebacks and help() say Tensor.sum
            setattr(Tensor, name, method)
