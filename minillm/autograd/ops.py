"""Elementwise, reduction and shape ops of the autograd engine, each a Function with its backward.

Binary ops broadcast like NumPy; their backward sums the gradient back to each input's
shape (`unbroadcast`). These are the small glue ops between the layer-sized ones in
`minillm.functional`; Tensor's operators (operators.py) call them. Function classes are named
<Op>Fn, which keeps them apart from the nn modules and the functions of the same name.
"""
import numpy as np

from .engine import Function, Tensor, unbroadcast


class AddFn(Function):
    """y = a + b;  da = dy, db = dy (summed over broadcast axes)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(np.shape(a), np.shape(b))
        return np.add(a, b)

    @staticmethod
    def backward(ctx, dy):
        a_shape, b_shape = ctx.saved
        return unbroadcast(dy, a_shape), unbroadcast(dy, b_shape)


class SubFn(Function):
    """y = a - b;  da = dy, db = -dy."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(np.shape(a), np.shape(b))
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, dy):
        a_shape, b_shape = ctx.saved
        return unbroadcast(dy, a_shape), unbroadcast(-dy, b_shape)


class MulFn(Function):
    """y = a * b;  da = dy * b, db = dy * a."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        da = unbroadcast(dy * b, np.shape(a)) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dy * a, np.shape(b)) if ctx.needs_input_grad[1] else None
        return da, db


class DivFn(Function):
    """y = a / b;  da = dy / b, db = -dy * a / b^2."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return np.divide(a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        da = unbroadcast(dy / b, np.shape(a)) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-dy * a / (b * b), np.shape(b)) if ctx.needs_input_grad[1] else None
        return da, db


class NegFn(Function):
    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, dy):
        return -dy


class PowFn(Function):
    """y = a ** p for a constant p;  da = dy * p * a^(p-1)."""

    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save(a, exponent)
        return np.power(a, exponent).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, dy):
        a, p = ctx.saved
        return dy * p * np.power(a, p - 1)


class PowTensorFn(Function):
    """y = a ** b;  da = dy * b * a^(b-1), db = dy * y * log(a) (a > 0 where b needs a grad)."""

    @staticmethod
    def forward(ctx, a, b):
        y = np.power(a, b)
        ctx.save(a, b, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b, y = ctx.saved
        da = unbroadcast(dy * b * np.power(a, b - 1), np.shape(a)) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dy * y * np.log(a), np.shape(b)) if ctx.needs_input_grad[1] else None
        return da, db


class ExpFn(Function):
    """y = exp(a);  da = dy * y."""

    @staticmethod
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * y


class LogFn(Function):
    """y = log(a);  da = dy / a."""

    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, dy):
        (a,) = ctx.saved
        return dy / a


class TanhFn(Function):
    """y = tanh(a);  da = dy * (1 - y^2)."""

    @staticmethod
    def forward(ctx, a):
        y = np.tanh(a)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * (1 - y * y)


class CastFn(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.save(a.dtype)
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, dy):
        (dtype,) = ctx.saved
        return dy.astype(dtype)


class MatMulFn(Function):
    """y = a @ b with NumPy's rules (1-D operands, broadcast batch axes).

    da = dy @ b^T, db = a^T @ dy, each summed over the batch axes it was broadcast along.
    """

    @staticmethod
    def forward(ctx, a, b):
        if np.ndim(a) == 0 or np.ndim(b) == 0:
            raise ValueError("matmul: operands must have at least one dimension; use * for scalars")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: a has shape {a.shape} and b has shape {b.shape}; "
                             "a's last axis must equal b's second-to-last")
        ctx.save(a, b)
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = dy[..., None] if b.ndim == 1 else dy
        g = g[..., None, :] if a.ndim == 1 else g
        da = db = None
        if ctx.needs_input_grad[0]:
            da = unbroadcast(g @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(np.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape)
        return da, db


def _expand_reduced(dy, shape, axis, keepdims):
    """Give dy (the gradient of a reduction) back the reduced axes so it broadcasts to shape."""
    if axis is None:
        return np.reshape(dy, (1,) * len(shape))
    if not keepdims:
        axes = (axis,) if np.isscalar(axis) else tuple(axis)
        dy = np.expand_dims(dy, tuple(ax % len(shape) for ax in axes))
    return dy


class SumFn(Function):
    """y = sum(a, axis);  da = dy broadcast back over the summed axes."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.save(a.shape, axis, keepdims)
        return np.asarray(np.sum(a, axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, dy):
        shape, axis, keepdims = ctx.saved
        return np.broadcast_to(_expand_reduced(dy, shape, axis, keepdims), shape).copy()


class MeanFn(Function):
    """y = mean(a, axis);  da = dy / n broadcast back, n = number of elements averaged."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        y = np.asarray(np.mean(a, axis=axis, keepdims=keepdims))
        ctx.save(a.shape, axis, keepdims, a.size // max(y.size, 1) if a.size else 1)
        return y.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, dy):
        shape, axis, keepdims, n = ctx.saved
        return np.broadcast_to(_expand_reduced(dy, shape, axis, keepdims) / n, shape).copy()


class MaxFn(Function):
    """y = max(a, axis);  the gradient goes to the maximal elements, split evenly among ties."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        y = np.asarray(np.max(a, axis=axis, keepdims=keepdims))
        ctx.save(a, y, axis, keepdims)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, y, axis, keepdims = ctx.saved
        is_max = a == _expand_reduced(y, a.shape, axis, keepdims)
        count = np.sum(is_max, axis=axis, keepdims=True)
        return is_max * (_expand_reduced(dy, a.shape, axis, keepdims) / count)


class ReshapeFn(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save(a.shape)
        return np.reshape(a, shape)

    @staticmethod
    def backward(ctx, dy):
        (shape,) = ctx.saved
        return np.reshape(dy, shape)


class TransposeFn(Function):
    """y = np.transpose(a, axes);  da = transpose of dy by the inverse permutation."""

    @staticmethod
    def forward(ctx, a, axes=None):
        ctx.save(axes)
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, dy):
        (axes,) = ctx.saved
        return np.transpose(dy, None if axes is None else np.argsort(axes))


class GetItemFn(Function):
    """y = a[index] (slices, ints, integer or boolean arrays);  da = dy scattered back, summed on repeats."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.save(a.shape, a.dtype, index)
        return np.array(a[index])

    @staticmethod
    def backward(ctx, dy):
        shape, dtype, index = ctx.saved
        da = np.zeros(shape, dtype=dtype)
        np.add.at(da, index, dy)
        return da


class ConcatFn(Function):
    """y = concatenate(xs, axis);  dx_i = the slice of dy that x_i filled."""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.save(axis, np.cumsum([x.shape[axis] for x in xs])[:-1])
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, dy):
        axis, splits = ctx.saved
        return tuple(np.split(dy, splits, axis=axis))


class StackFn(Function):
    """y = stack(xs, axis);  dx_i = dy indexed at i along the new axis."""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.save(axis, len(xs))
        return np.stack(xs, axis=axis)

    @staticmethod
    def backward(ctx, dy):
        axis, n = ctx.saved
        return tuple(np.take(dy, i, axis=axis) for i in range(n))


def _check_same_rank(name, tensors):
    if not tensors:
        raise ValueError(f"{name}: needs at least one tensor")
    return [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]


def concat(tensors, axis=0):
    """Concatenate tensors along an existing axis (like np.concatenate)."""
    tensors = _check_same_rank("concat", list(tensors))
    shapes = [t.shape for t in tensors]
    ndim = len(shapes[0])
    if any(len(s) != ndim for s in shapes) or ndim == 0:
        raise ValueError(f"concat: all tensors need the same number (>= 1) of dimensions, got shapes {shapes}")
    ax = axis % ndim
    if any(s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:] for s in shapes):
        raise ValueError(f"concat: shapes {shapes} differ outside axis {axis}")
    return ConcatFn.apply(*tensors, axis=ax)


def stack(tensors, axis=0):
    """Stack tensors of one shape along a new axis (like np.stack)."""
    tensors = _check_same_rank("stack", list(tensors))
    shapes = [t.shape for t in tensors]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"stack: all tensors need the same shape, got {shapes}")
    return StackFn.apply(*tensors, axis=axis)
