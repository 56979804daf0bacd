"""The autograd layer: Tensor, Function, reverse-mode backward() and the small ops.

    engine.py     Tensor, Function (forward/backward with a ctx), the tape, backward(), no_grad
    ops.py        elementwise, reduction and shape ops (AddFn, MatMulFn, SumFn, ...), concat, stack
    operators.py  Tensor's operators and array methods (+ * @ [] .sum() .reshape() ...), made of ops.py

Import Tensor from here (or from minillm): importing this package attaches Tensor's operators,
so a Tensor from minillm.autograd always has them.
"""
from . import operators
from .engine import Function, Tensor, grad_ready_hook, is_grad_enabled, no_grad, tensor, unbroadcast
from .ops import concat, stack

operators.attach()

__all__ = ["Tensor", "Function", "tensor", "no_grad", "grad_ready_hook", "is_grad_enabled", "concat", "stack", "unbroadcast"]
