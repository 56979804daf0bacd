"""The native RoPE (csrc/rope.cpp) equals the NumPy reference, forward and backward, for tables
shared by the batch (T, D) and per batch row (B, 1, T, D), float32 and float64, on both SIMD paths;
and its bindings reject bad arrays with a ValueError naming the argument."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.testing.strategies import arrays_like

from kernel_parity import simd_path  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


@st.composite
def rope_inputs(draw):
    B, H, T = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    D = draw(st.sampled_from([2, 4, 6, 8, 16, 34]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = draw(arrays_like((B, H, T, D), dtype))
    per_batch = draw(st.booleans())
    positions = draw(arrays_like((B, T) if per_batch else (T,), np.float64)).__abs__().astype(np.int64) * 7
    cos, sin = reference.rope_angles(positions, D, draw(st.sampled_from([10000.0, 500000.0])), dtype)
    return x, cos, sin


@given(inputs=rope_inputs())
def test_native_rope_equals_the_reference(inputs, simd_path):
    x, cos, sin = inputs
    np.testing.assert_array_equal(native.rope.rope_forward(x, cos, sin), reference.rope_forward(x, cos, sin))
    np.testing.assert_array_equal(native.rope.rope_backward(x, cos, sin), reference.rope_backward(x, cos, sin))


def test_rope_backward_is_the_transpose_of_the_forward():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 3, 5, 8)), rng.standard_normal((2, 3, 5, 8))
    cos, sin = reference.rope_angles(np.arange(5), 8, 10000.0, np.float64)
    # <R x, dy> = <x, R^T dy>
    assert np.isclose(np.sum(native.rope.rope_forward(x, cos, sin) * dy),
                      np.sum(x * native.rope.rope_backward(dy, cos, sin)), rtol=1e-12)


def test_rope_bindings_reject_bad_arrays():
    x = np.zeros((1, 2, 3, 4), np.float32)
    cos, sin = reference.rope_angles(np.arange(3), 4, 10000.0, np.float32)
    with pytest.raises(ValueError, match="rope_forward: x must be"):
        native._C.rope_forward(x[0], cos, sin)
    with pytest.raises(ValueError, match="head dim D must be even"):
        native._C.rope_forward(np.zeros((1, 2, 3, 5), np.float32), cos[:, :5], sin[:, :5])
    with pytest.raises(ValueError, match="rope_forward: cos has shape"):
        native._C.rope_forward(x, cos[:2], sin[:2])
    with pytest.raises(ValueError, match="rope_backward: cos must have dy's dtype"):
        native._C.rope_backward(x, cos.astype(np.float64), sin.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        native._C.rope_forward(x.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3), cos, sin)
