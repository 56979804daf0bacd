"""Shared by the native-kernel parity tests: run each test on both SIMD paths, and compare with
tolerances derived from the length of the reductions involved."""
import numpy as np
import pytest

from minillm.kernels import native


@pytest.fixture(params=["simd", "scalar"])
def simd_path(request):
    """Run the test on the AVX2 path and again on the forced scalar twin."""
    native._C.force_scalar(request.param == "scalar")
    yield request.param
    native._C.force_scalar(False)


def tolerance(dtype, n):
    """Relative error of a length-n reduction in dtype grows about like n * unit roundoff."""
    return (n + 4) * np.finfo(dtype).eps * 4


def assert_close(actual, desired, rtol, atol=0.0):
    """|actual - desired| <= atol + rtol |desired| elementwise; atol may be an array (per-row scales)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    bad = ~(np.abs(actual - desired) <= atol + rtol * np.abs(desired))
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ; first: {actual[bad][:3]} vs {desired[bad][:3]}"
