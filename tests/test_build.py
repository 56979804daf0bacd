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
    assert info["cpu_simd"] in native._C.isa_names()
    assert info["supported_isas"][0] == "scalar" and info["cpu_simd"] == info["supported_isas"][-1]
    assert set(info["kernel_paths"]) >= {"gemm", "gemv", "softmax", "attention", "quant_matmul"}
    assert set(info["kernel_paths"].values()) <= set(info["supported_isas"])
    assert all(info["caches"][level] > 0 for level in ("l1d", "l2", "l3"))
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


def test_force_isa_runs_each_supported_path_and_refuses_the_others():
    try:
        for path in native._C.supported_isas():
            native._C.force_isa(path)
            assert native._C.simd_in_use() == path
            assert mm.build_info()["simd"] == path
            assert mm.build_info()["kernel_paths"]["gemm"] in native._C.supported_isas()
        for path in set(native._C.isa_names()) - set(native._C.supported_isas()):
            with pytest.raises(ValueError, match=f"does not support the '{path}' path"):
                native._C.force_isa(path)
        with pytest.raises(ValueError, match="unknown path 'sse9'"):
            native._C.force_isa("sse9")
        native._C.force_scalar(True)                       # the older switch is force_isa("scalar")
        assert mm.build_info()["kernel_paths"]["gemm"] == "scalar"
        native._C.force_scalar(False)
        assert native._C.simd_in_use() == native._C.cpu_simd()
    finally:
        native._C.force_isa(None)
    assert native._C.simd_in_use() == native._C.cpu_simd()
