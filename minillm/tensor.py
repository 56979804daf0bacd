"""The old path of the autograd engine, kept so `from minillm.tensor import Tensor, no_grad` works.

The engine lives in minillm/autograd/ now; new code imports from minillm or minillm.autograd.

minillm.tensor is also the name of the tensor() function (`mm.tensor([1.0, 2.0])`). Importing this
module makes Python set the package attribute minillm.tensor to the module, so the module is made
callable: calling it is calling tensor(), and `mm.tensor(...)` works either way.
"""
import sys
import types

from .autograd import Function, Tensor, is_grad_enabled, no_grad, tensor, unbroadcast
from .autograd.engine import Context

__all__ = ["Tensor", "Function", "Context", "tensor", "no_grad", "is_grad_enabled", "unbroadcast"]


class _CallableModule(types.ModuleType):
    def __call__(self, data, requires_grad=False, dtype=None):
        return tensor(data, requires_grad=requires_grad, dtype=dtype)


sys.modules[__name__].__class__ = _CallableModule
