"""Module and Parameter: named parameters, train/eval, state_dict, like torch.nn but in a page.

A Module finds its parameters and sub-modules by walking its own attributes in the order
they were set, so there is no registration step: `self.weight = Parameter(...)` is enough.
"""
import numpy as np

from ..autograd import Tensor

_default_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the generator that initialises parameters when no rng is passed."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def default_rng():
    return _default_rng


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (always requires grad)."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    # ----- walking the tree
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) of this module and its sub-modules, in the order they were set."""
        found = []
        self._collect_parameters(prefix, found)
        return iter(found)

    def _collect_parameters(self, prefix, found):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                found.append((f"{prefix}.{name}" if prefix else name, value))
            elif isinstance(value, Module):
                value._collect_parameters(f"{prefix}.{name}" if prefix else name, found)

    def parameters(self):
        found = []
        self._collect_parameters("", found)
        return [p for _, p in found]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ----- modes and state
    def train(self, mode=True):
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, dtype):
        """Cast every parameter to dtype, in place."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        return self

    # ----- buffers: arrays that are state but are not trained (e.g. quantized weights)
    def own_buffers(self):
        """{name: array} of this module's own buffers; none unless a subclass keeps some."""
        return {}

    def named_buffers(self):
        """(dotted name, module, attribute name, array) of every buffer in the tree."""
        for prefix, module in self.named_modules():
            for name, array in module.own_buffers().items():
                yield (f"{prefix}.{name}" if prefix else name), module, name, array

    def state_dict(self):
        """{dotted parameter or buffer name: a copy of its array}."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: array.copy() for name, _, _, array in self.named_buffers()})
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters of the same names (cast to each parameter's dtype), and
        into the buffers (whose dtype must match exactly: int8 is not uint8).

        strict: every parameter and buffer must be given and no other key may be. Shapes must match.
        Nothing is changed unless the whole state fits.
        """
        params = dict(self.named_parameters())
        buffers = {name: (module, attr, array) for name, module, attr, array in self.named_buffers()}
        missing = [k for k in list(params) + list(buffers) if k not in state]
        unexpected = [k for k in state if k not in params and k not in buffers]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, array in state.items():
            if name in params and np.shape(array) != params[name].shape:
                raise ValueError(f"load_state_dict: {name} has shape {np.shape(array)} in the state "
                                 f"but {params[name].shape} in the model")
            if name in buffers:
                have = buffers[name][2]
                if np.shape(array) != have.shape or np.asarray(array).dtype != have.dtype:
                    raise ValueError(f"load_state_dict: {name} is {np.asarray(array).dtype} {np.shape(array)} in "
                                     f"the state but {have.dtype} {have.shape} in the model")
        for name, array in state.items():
            if name in params:
                params[name].data = np.array(array, dtype=params[name].dtype)
            elif name in buffers:
                module, attr, _ = buffers[name]
                setattr(module, attr, np.array(array))
        return self

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in self.named_children())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self):
        return ""


class ModuleList(Module):
    """A list of modules whose parameters are named 0.weight, 1.weight, ..."""

    def __init__(self, modules=()):
        self._length = 0
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(module).__name__}")
        setattr(self, str(self._length), module)
        self._length += 1

    def __getitem__(self, i):
        if not -self._length <= i < self._length:
            raise IndexError(f"ModuleList: index {i} out of range for {self._length} modules")
        return getattr(self, str(i % self._length))

    def __len__(self):
        return self._length

    def __iter__(self):
        return (self[i] for i in range(self._length))
