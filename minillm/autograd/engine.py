"""A tiny reverse-mode autograd engine over NumPy arrays.

A `Tensor` wraps an array. Applying a `Function` to tensors runs its `forward` on the
arrays and, when any input needs a gradient, records one node on the tape: the function,
its context (what forward saved) and its tensor inputs. `Tensor.backward()` walks the
tape in reverse topological order, calls each node's handwritten `backward`, and sums
the gradients that reach a tensor from every place it was used.

The tape is coarse (docs/architecture.md): a node is a layer-sized op such as attention or
RMSNorm, each with a backward written out by hand, not one node per scalar.

This module is the bottom of the autograd layer and imports nothing from the ops built on it.
Tensor's arithmetic (+ - * / ** @, [], sum, mean, reshape, transpose, ...) is made of those ops
(minillm/autograd/ops.py), so it is attached to Tensor by minillm/autograd/operators.py; importing
minillm.autograd (which every user of Tensor does) attaches it.
"""
from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np

_state = threading.local()
_recorded = itertools.count(1)     # numbers the tensors Function.apply records, in creation order


def is_grad_enabled():
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def grad_ready_hook(callback):
    """Within this block, backward() calls callback(leaf) as soon as a leaf's .grad is final for
    that pass: the tape is walked in reverse topological order, so by the time a leaf comes up
    every use of it has been summed. Data-parallel training starts summing a bucket of gradients
    over the ranks from here while backward goes on (minillm/distributed/buckets.py)."""
    previous = getattr(_state, "grad_ready", None)
    _state.grad_ready = callback
    try:
        yield
    finally:
        _state.grad_ready = previous


@contextlib.contextmanager
def no_grad():
    """Within this block no tape is recorded: results have requires_grad=False."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


class Context:
    """What a Function's forward keeps for its backward."""

    def __init__(self):
        self.saved = ()
        self.needs_input_grad = ()

    def save(self, *arrays):
        self.saved = arrays


class Node:
    """One entry on the tape: the function that made a tensor, and its tensor inputs."""

    __slots__ = ("function", "ctx", "inputs")

    def __init__(self, function, ctx, inputs):
        self.function = function
        self.ctx = ctx
        self.inputs = inputs  # list of (argument position, Tensor)


class Function:
    """An op with a handwritten backward.

    Subclasses define two static methods on plain NumPy arrays:
      forward(ctx, *args, **kwargs) -> array
      backward(ctx, grad) -> one gradient per positional argument of forward
        (an array, or None for arguments that take no gradient; trailing Nones may be left out).
    Call it with `MyFunction.apply(*args, **kwargs)`; Tensor arguments are unwrapped to arrays.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("Function subclasses define forward")

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("Function subclasses define backward")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = Context()
        arrays, inputs = [], []                        # inputs: (position, Tensor) of those needing a gradient
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                arrays.append(a.data)
                if a.requires_grad:
                    inputs.append((i, a))
            else:
                arrays.append(a)
        if not inputs or not is_grad_enabled():        # nothing to record (inference: the common decode path)
            ctx.needs_input_grad = (False,) * len(args)
            return Tensor._wrap(cls.forward(ctx, *arrays, **kwargs), False)
        needs = [False] * len(args)
        for i, _ in inputs:
            needs[i] = True
        ctx.needs_input_grad = tuple(needs)
        result = Tensor._wrap(cls.forward(ctx, *arrays, **kwargs), True)
        result._node = Node(cls, ctx, inputs)
        result._order = next(_recorded)                # creation order: a topological order of the tape
        return result


def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)):   # NumPy arrays and scalars keep their dtype
        data = np.asarray(data)
        return data.astype(dtype, copy=False) if dtype is not None else data
    array = np.asarray(data, dtype=dtype)
    if dtype is None and array.dtype == np.float64:
        array = array.astype(np.float32)  # Python floats become the library default, float32
    return array


class Tensor:
    """An n-dimensional array that can carry a gradient.

    data: the NumPy array; grad: its gradient after backward() (same shape), or None;
    requires_grad: whether backward() should compute grad for it.
    NumPy arrays keep their dtype; Python scalars and lists become float32 (or int64).

    The operators + - * / ** @ and [], and sum, mean, max, exp, log, tanh, reshape, view,
    transpose, T and astype, each one node on the tape, are attached by operators.py.
    """

    __array_priority__ = 1000  # make ndarray (op) Tensor defer to Tensor's reflected ops
    _order = 0                 # recorded tensors get 1, 2, ... (Function.apply); leaves stay 0

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node = None

    @classmethod
    def _wrap(cls, out, requires_grad):
        """A Tensor around a Function's output (an array, or a NumPy scalar of a reduction), without
        Tensor()'s conversions: what Function.apply makes for every op."""
        t = cls.__new__(cls)
        t.data = out if type(out) is np.ndarray else _as_array(out)
        if requires_grad and t.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got {t.data.dtype}")
        t.requires_grad = requires_grad
        t.grad = None
        t._node = None
        return t

    # ----- array-like properties
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, dtype={self.dtype}{grad})"

    def detach(self):
        """The same data, cut from the tape (shares memory, never requires grad)."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ----- reverse mode
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into the .grad of every leaf that requires it.

        grad defaults to 1 for a tensor with one element. Gradients of a tensor used in
        several places are summed; calling backward twice adds to .grad (zero it between steps).
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input to it had requires_grad=True)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: grad must be given for a non-scalar tensor of shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = _as_array(grad, self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad has shape {grad.shape} but the tensor has shape {self.shape}")

        grads = {id(self): grad}
        grad_ready = getattr(_state, "grad_ready", None)
        for tensor in reversed(_topological_order(self)):
            g = grads.pop(id(tensor), None)
            if g is None:
                continue
            node = tensor._node
            if node is None:  # a leaf
                tensor.grad = g.copy() if tensor.grad is None else tensor.grad + g
                if grad_ready is not None:
                    grad_ready(tensor)
                continue
            input_grads = node.function.backward(node.ctx, g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for position, parent in node.inputs:
                pg = input_grads[position] if position < len(input_grads) else None
                if pg is None:
                    continue
                data = parent.data
                if pg.shape != data.shape:
                    raise RuntimeError(
                        f"{node.function.__name__}.backward returned a gradient of shape {pg.shape} "
                        f"for an input of shape {data.shape}")
                if pg.dtype != data.dtype:
                    pg = pg.astype(data.dtype)
                key = id(parent)
                earlier = grads.get(key)
                grads[key] = pg if earlier is None else earlier + pg    # summed over every use


def _topological_order(root):
    """Tensors reachable from root, every tensor after all of its inputs.

    Function.apply numbers each tensor it records (Tensor._order): a tensor's inputs existed
    before it was made, so creation order is already topological. Collect what is reachable,
    then sort by that number (leaves, unnumbered, first)."""
    reachable = {id(root): root}
    stack = [root]
    while stack:
        node = stack.pop()._node
        if node is not None:
            for _, parent in node.inputs:
                if id(parent) not in reachable:
                    reachable[id(parent)] = parent
                    stack.append(parent)
    return sorted(reachable.values(), key=_creation_order)


def _creation_order(tensor):
    return tensor._order


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor (like torch.tensor)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def unbroadcast(grad, shape):
    """Sum grad down to `shape`, undoing NumPy broadcasting (the backward of a broadcast)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)
