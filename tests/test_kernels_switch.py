"""The backend switch (minillm.kernels): one function per kernel, which runs the backend in use
with exactly the arguments it was given and the reference's signature."""
import inspect

import pytest

from minillm import kernels
from minillm.kernels import native, reference

BACKENDS = ["numpy"] + (["native"] if native.AVAILABLE else [])
# The switch's parameter names are the reference's, but for the cross-entropy backward's state,
# which is the probabilities in NumPy and softmax - onehot in C++.
RENAMED = {("cross_entropy_backward", "probs"): "state"}


def implementation(name, backend):
    """The function kernels.<name> must call on `backend`."""
    if backend == "native" and name in native.KERNELS:
        return native.KERNELS[name]
    return getattr(reference, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", reference.KERNELS)
def test_each_kernel_calls_the_backend_in_use_with_every_argument(name, backend, monkeypatch):
    target = implementation(name, backend)
    calls = []
    monkeypatch.setattr(inspect.getmodule(target), name, lambda *args, **kw: calls.append((args, kw)) or "result")
    args = tuple(object() for _ in inspect.signature(getattr(kernels, name)).parameters)
    previous = kernels.get_backend()
    kernels.set_backend(backend)
    try:
        assert getattr(kernels, name)(*args) == "result"
    finally:
        kernels.set_backend(previous)
    assert calls == [(args, {})]


@pytest.mark.parametrize("name", reference.KERNELS)
def test_each_kernel_has_the_reference_signature(name):
    want = list(inspect.signature(getattr(reference, name)).parameters.values())
    got = list(inspect.signature(getattr(kernels, name)).parameters.values())
    assert [p.name for p in got] == [RENAMED.get((name, p.name), p.name) for p in want]
    assert [(p.kind, p.default) for p in got] == [(p.kind, p.default) for p in want]
    if name in native.KERNELS:   # the wrapper takes the same arguments in the same order
        wrapper = list(inspect.signature(native.KERNELS[name]).parameters.values())
        assert [(p.kind, p.default) for p in wrapper] == [(p.kind, p.default) for p in want]


def test_the_switch_takes_effect_at_once_and_rejects_unknown_backends():
    previous = kernels.get_backend()
    try:
        kernels.set_backend("numpy")
        assert kernels.get_backend() == "numpy"
        for backend in BACKENDS:
            kernels.set_backend(backend)
            assert kernels.get_backend() == backend
        with pytest.raises(ValueError, match="backend must be one of"):
            kernels.set_backend("cuda")
    finally:
        kernels.set_backend(previous)


def test_native_kernels_names_the_kernels_with_a_cpp_version():
    assert kernels.native_kernels() == sorted(native.KERNELS)
    if native.AVAILABLE:
        assert "softmax_forward" in kernels.native_kernels()
