import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@given(x=arrays_f64(shapes(min_dims=1, max_dims=3)), eps=st.sampled_from([1e-5, 1e-6]), data=st.data())
def test_rms_norm_gradient(x, eps, data):
    w = data.draw(arrays_f64((x.shape[-1],)))
    gradcheck(lambda x, w: F.rms_norm(x, w, eps=eps), [x, w])


@given(x=arrays_f64(shapes(min_dims=1, max_dims=3)), data=st.data())
def test_layer_norm_gradient(x, data):
    C = x.shape[-1]
    w, b = data.draw(arrays_f64((C,))), data.draw(arrays_f64((C,)))
    gradcheck(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b])


@given(x=arrays_f64(shapes(min_dims=2, max_dims=3, min_side=2), low=-50, high=50))
def test_norms_match_their_definitions(x):
    C = x.shape[-1]
    w, b = np.linspace(0.5, 1.5, C), np.linspace(-1, 1, C)
    rms = np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(F.rms_norm(x, w).data, x / rms * w, rtol=1e-10, atol=1e-12)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(F.layer_norm(x, w, b).data, (x - mean) / np.sqrt(var + 1e-5) * w + b,
                               rtol=1e-9, atol=1e-9)


def test_norm_bad_input():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"rms_norm: weight has shape \(3,\)"):
        F.rms_norm(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="layer_norm: bias has shape"):
        F.layer_norm(x, np.ones(4, np.float32), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="eps must be positive"):
        F.rms_norm(x, np.ones(4, np.float32), eps=0.0)
