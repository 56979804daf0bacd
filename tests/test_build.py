"""The native build: what it reports, thread control, the backend switch."""
import numpy as np
import pytest

import minillm as mm
from minillm import kernels
from minillm.kernels import native, reference

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


def test_build_info_reports_the_build():
    info = mm.build_info()
    assert info["native"] is True
    assert isinstance(info["openmp"], bool)
    assert info["cpu_simd"] in ("avx2+fma", "scalar")
    assert info["threads"] >= 1
    assert "softmax_forward" in info["native_kernels"]


def test_set_num_threads_round_trips():
    before = mm.get_num_threads()
    try:
        mm.set_num_threads(1)
        assert mm.get_num_threads() == 1
        x = np.random.default_rng(0).standard_normal((512, 300)).astype(np.float32)
        np.testing.assert_allclose(kernels.softmax_forward(x), reference.softmax_forward(x), rtol=1e-5, atol=1e-8)
    finally:
        mm.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be >= 1"):
        native._C.set_num_threads(0)


def test_every_native_kernel_has_a_reference_twin():
    assert set(native.KERNELS) <= set(reference.KERNELS)
