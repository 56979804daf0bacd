"""The fused AdamW update (csrc/optim.cpp) gives the reference's bits, in place, float32 and float64,
with and without weight decay; the binding rejects mismatched arrays."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.testing.strategies import arrays_like

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 7, 4096, 10000]),
       dtype=st.sampled_from([np.float32, np.float64]), weight_decay=st.sampled_from([0.0, 0.1]),
       step=st.integers(1, 3000))
def test_native_adamw_gives_the_reference_bits(seed, n, dtype, weight_decay, step):
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    ours, ref = [a.copy() for a in (p, g, m, v)], [a.copy() for a in (p, g, m, v)]
    native.optim.adamw_step(*ours, 3e-4, 0.9, 0.95, 1e-8, weight_decay, step)
    reference.adamw_step(*ref, 3e-4, 0.9, 0.95, 1e-8, weight_decay, step)
    for name, a, b in zip("pgmv", ours, ref):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(ours[0], p)                                  # it did update in place


def test_adamw_binding_rejects_mismatched_arrays():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="adamw_step: g has shape"):
        native._C.adamw_step(p=a, g=np.zeros(5, np.float32), m=a.copy(), v=a.copy(), lr=1e-3, beta1=0.9, beta2=0.9,
                             eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="m and p must have the same dtype"):
        native._C.adamw_step(p=a, g=a.copy(), m=np.zeros(4), v=a.copy(), lr=1e-3, beta1=0.9, beta2=0.9, eps=1e-8,
                             weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        native._C.adamw_step(p=a, g=a.copy(), m=a.copy(), v=a.copy(), lr=1e-3, beta1=0.9, beta2=0.9, eps=1e-8,
                             weight_decay=0.0, step=0)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        native._C.adamw_step(p=frozen, g=a.copy(), m=a.copy(), v=a.copy(), lr=1e-3, beta1=0.9, beta2=0.9, eps=1e-8,
                             weight_decay=0.0, step=1)
