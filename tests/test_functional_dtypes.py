"""float32 in, float32 out: every op keeps the dtype of its inputs, forward and backward
(a stray NumPy float64 scalar would silently promote a whole model to float64)."""
import numpy as np
import pytest

import minillm as mm
import minillm.functional as F

rng = np.random.default_rng(0)
x4 = rng.standard_normal((2, 4, 3, 6))
x2 = rng.standard_normal((5, 6))

CASES = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [x2, rng.standard_normal((3, 6)), rng.standard_normal(3)]),
    "embedding": (lambda w: F.embedding(np.array([[0, 2]]), w), [x2]),
    "rms_norm": (lambda x, w: F.rms_norm(x, w), [x2, np.ones(6)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [x2, np.ones(6), np.zeros(6)]),
    "gelu": (F.gelu, [x2]),
    "silu": (F.silu, [x2]),
    "swiglu": (F.swiglu, [x2, rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), rng.standard_normal((6, 4))]),
    "softmax": (F.softmax, [x2]),
    "log_softmax": (F.log_softmax, [x2]),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 1, -100, 3, 5])), [x2]),
    "dropout": (lambda x: F.dropout(x, 0.3, rng=np.random.default_rng(0)), [x2]),
    "rope": (lambda x: F.rope(x, np.arange(3)), [x4]),
    "attention": (lambda q, k, v: F.attention(q, k, v, window=2, alibi_slopes=F.alibi_slopes(4)),
                  [x4, x4[:, :2], x4[:, :2]]),
    "tensor ops": (lambda a: ((a * 2.0 + 1.0) / 3.0 - a ** 2).mean(axis=0).max(), [x2]),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_keeps_dtype_forward_and_backward(backend, name, dtype):
    fn, arrays = CASES[name]
    inputs = [mm.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
    out = fn(*inputs)
    assert out.dtype == dtype, f"{name} forward returned {out.dtype}"
    out.backward(np.ones(out.shape, dtype))
    for i, t in enumerate(inputs):
        assert t.grad is not None and t.grad.dtype == dtype, f"{name} gradient {i} is {getattr(t.grad, 'dtype', None)}"
