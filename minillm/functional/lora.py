"""LoRA: a frozen linear layer plus a trained low-rank update, as one autograd node.

    y = x W^T + b + s (x_d A^T) B^T,   x_d = x * mask (dropout on the adapter's input only)

x: (..., K); W: (N, K), frozen (a float array, or quantized weights whose matmul is the integer
kernel); b: (N,) or None; A: (r, K); B: (N, r); s: the scale, alpha / r (alpha / sqrt(r) with rsLoRA);
mask: None, or dropout's (..., K) array of 0 and 1 / (1 - p). With u = x_d A^T (M, r) and g = dy (M, N):

    dB = s g^T u                       (N, r)
    dA = s (g B)^T x_d                 (r, K)
    dx = g W + s ((g B) A) * mask      (M, K)   (the first term straight through a quantized W)
    dW = g^T x,  db = sum of g         only if W or b require a gradient (in LoRA they do not)

Every product is minillm's GEMM (kernels.matmul). The frozen base weight is not an input of the
tape when it does not require a gradient, so it never gets a .grad.
"""
import numpy as np

from .. import kernels
from ..autograd import Function
from ._checks import as_input, check_float, check_ndim


def _low_rank(x2, A, B, scale, mask2, y):
    """y += s (x_d A^T) B^T; returns x_d and u = x_d A^T (kept for the backward)."""
    xd = x2 if mask2 is None else x2 * mask2
    u = kernels.matmul(xd, A, trans_b=True)                               # (M, r)
    kernels.matmul(u * scale, B, trans_b=True, out=y, accumulate=True)    # (M, N)
    return xd, u


def _low_rank_backward(g, xd, u, A, B, scale, mask2, needs):
    """(dx's low-rank term or None, dA, dB) for g = dy (M, N)."""
    gB = kernels.matmul(g, B)                                             # (M, r)
    dA = kernels.matmul(gB, xd, trans_a=True) * scale if needs[0] else None
    dB = kernels.matmul(g, u, trans_a=True) * scale if needs[1] else None
    dx = None
    if needs[2]:
        dx = kernels.matmul(gB * scale, A)                                # (M, K)
        if mask2 is not None:
            dx *= mask2
    return dx, dA, dB


class LoraLinearFn(Function):
    @staticmethod
    def forward(ctx, x, w, b, A, B, scale, mask):
        K = x.shape[-1]
        x2 = x.reshape(-1, K)
        mask2 = None if mask is None else mask.reshape(-1, K)
        y = kernels.linear_forward(x2, w, b).astype(x.dtype, copy=False)   # (M, N)
        xd, u = _low_rank(x2, A, B, scale, mask2, y)
        ctx.save(x.shape, x2, w, b is not None, A, B, scale, mask2, xd, u)
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x_shape, x2, w, has_bias, A, B, scale, mask2, xd, u = ctx.saved
        need_x, need_w, need_b, need_A, need_B = (ctx.needs_input_grad[i] for i in range(5))
        g = np.ascontiguousarray(dy.reshape(-1, w.shape[0]))
        low_dx, dA, dB = _low_rank_backward(g, xd, u, A, B, scale, mask2, (need_A, need_B, need_x))
        dx = None
        if need_x:
            dx = kernels.matmul(g, w, out=low_dx, accumulate=True).reshape(x_shape)   # g W + low-rank term
        dw = kernels.matmul(g, x2, trans_a=True) if need_w else None
        db = g.sum(axis=0) if need_b and has_bias else None
        return dx, dw, db, dA, dB


class LoraQuantizedFn(Function):
    @staticmethod
    def forward(ctx, x, b, A, B, scale, mask, quantized):
        scheme, q, qscale, third = quantized
        K = x.shape[-1]
        x2 = np.ascontiguousarray(x.reshape(-1, K))
        mask2 = None if mask is None else mask.reshape(-1, K)
        y = kernels.quant_matmul(x2.astype(np.float32, copy=False), scheme, q, qscale, third, b)
        y = y.astype(x.dtype, copy=False)
        xd, u = _low_rank(x2, A, B, scale, mask2, y)
        ctx.save(x.shape, b is not None, A, B, scale, mask2, xd, u, quantized)
        return y.reshape(*x.shape[:-1], q.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x_shape, has_bias, A, B, scale, mask2, xd, u, quantized = ctx.saved
        need_x, need_b, need_A, need_B = (ctx.needs_input_grad[i] for i in range(4))
        N = quantized[1].shape[0]
        g = np.ascontiguousarray(dy.reshape(-1, N))
        low_dx, dA, dB = _low_rank_backward(g, xd, u, A, B, scale, mask2, (need_A, need_B, need_x))
        dx = None
        if need_x:                            # straight through the quantized weights: g dequantize(W)
            w = kernels.dequantize_weights(*quantized).astype(g.dtype, copy=False)      # (N, K), transient
            dx = kernels.matmul(g, w, out=low_dx, accumulate=True).reshape(x_shape)
        db = g.sum(axis=0) if need_b and has_bias else None
        return dx, db, dA, dB


def _check_adapter(fn, x, A, B, N, scale, mask):
    check_float(fn, x=x, A=A, B=B)
    check_ndim(fn, "x", x, min_ndim=1)
    K = x.shape[-1]
    if A.ndim != 2 or A.shape[1] != K:
        raise ValueError(f"{fn}: A has shape {A.shape} but x has {K} features; A must be (r, {K})")
    r = A.shape[0]
    if B.shape != (N, r):
        raise ValueError(f"{fn}: B has shape {B.shape}; with A {A.shape} and {N} outputs it must be ({N}, {r})")
    if not (isinstance(scale, (int, float, np.floating)) and np.isfinite(scale)):
        raise ValueError(f"{fn}: scale must be a finite number, got {scale!r}")
    if mask is not None and np.shape(mask) != x.shape:
        raise ValueError(f"{fn}: mask has shape {np.shape(mask)} but x has shape {x.shape}; they must match")


def lora_linear(x, w, b, A, B, scale, mask=None):
    """x W^T + b + scale (x * mask) A^T B^T as one node (see the module docstring).

    x: (..., K), w: (N, K), b: (N,) or None, A: (r, K), B: (N, r), mask: None or x's shape.
    """
    x, w, A, B = (as_input(a) for a in (x, w, A, B))
    b = None if b is None else as_input(b)
    check_float("lora_linear", w=w, b=b)
    check_ndim("lora_linear", "w", w, ndim=2)
    if x.ndim and x.shape[-1] != w.shape[1]:
        raise ValueError(f"lora_linear: x has shape {x.shape} but w has shape {w.shape}; x's last axis must be {w.shape[1]}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"lora_linear: b has shape {b.shape}; it must be ({w.shape[0]},)")
    _check_adapter("lora_linear", x, A, B, w.shape[0], scale, mask)
    mask = None if mask is None else np.asarray(mask, dtype=x.dtype)
    return LoraLinearFn.apply(x, w, b, A, B, float(scale), mask)


def lora_quantized_linear(x, scheme, q, qscale, third, b, A, B, scale, mask=None):
    """lora_linear with the frozen W quantized (scheme, q, qscale and q4_1's mins or nf4's second-level
    scales as `third`; see minillm.nn.quantized): its matmul is the integer (or NF4) kernel, and dx
    goes straight through it (g dequantize(W)). W has no gradient; b may have one."""
    x, A, B = (as_input(a) for a in (x, A, B))
    b = None if b is None else as_input(b)
    check_float("lora_quantized_linear", b=b)
    N = q.shape[0]
    _check_adapter("lora_quantized_linear", x, A, B, N, scale, mask)
    if b is not None and b.shape != (N,):
        raise ValueError(f"lora_quantized_linear: b has shape {b.shape}; it must be ({N},)")
    mask = None if mask is None else np.asarray(mask, dtype=x.dtype)
    return LoraQuantizedFn.apply(x, b, A, B, float(scale), mask, (scheme, q, qscale, third))


def dropout_mask(shape, p, rng, dtype):
    """Inverted dropout's mask: 0 with probability p, else 1 / (1 - p); None when p == 0."""
    if not p:
        return None
    if p >= 1:
        return np.zeros(shape, dtype)
    return (rng.random(shape) >= p).astype(dtype) / dtype.type(1 - p)


