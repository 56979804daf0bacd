"""Shared by the native-kernel parity tests: run each test on every SIMD path the CPU supports, and
compare with tolerances derived from the length of the reductions involved.

A test module names its kernel family (`FAMILY = "gemm"`, a key of `_C.kernel_paths()`; a test of
another family says so with `@family("...")` above its other decorators); the `simd_path` fixture
then runs each test once per path of `_C.isa_names()` with that path forced.
A path this CPU lacks is skipped, saying so (CI on an AVX2-only machine reports the AVX-512 paths
as skipped). A path under which the family runs the code of a lower path (the float kernels take
their avx2 code under avx2-vnni) is skipped as a duplicate of the path whose code it runs.
"""
import numpy as np
import pytest

from minillm.kernels import native

PATHS = native._C.isa_names() if native.AVAILABLE else ["scalar"]


def family_path(family, path):
    """The path `family` takes while `path` is forced."""
    native._C.force_isa(path)
    try:
        return native._C.kernel_paths()[family]
    finally:
        native._C.force_isa(None)


def family(name):
    """Mark a test as one of family `name` (when its module's FAMILY is another)."""
    def mark(test):
        test.kernel_family = name
        return test
    return mark


@pytest.fixture(params=PATHS)
def simd_path(request):
    """Force each path in turn (restoring the CPU's best afterwards); yields the path's name."""
    path = request.param
    if not native.AVAILABLE:
        pytest.skip("the native extension is not built")
    if path not in native._C.supported_isas():
        pytest.skip(f"this CPU has no {path} (it supports {', '.join(native._C.supported_isas())})")
    family = getattr(request.function, "kernel_family", getattr(request.module, "FAMILY", None))
    if family is not None:
        taken = family_path(family, path)
        if taken != path:
            pytest.skip(f"{family} runs its {taken} code on the {path} path (tested there)")
    native._C.force_isa(path)
    yield path
    native._C.force_isa(None)


def tolerance(dtype, n):
    """Relative error of a length-n reduction in dtype grows about like n * unit roundoff."""
    return (n + 4) * np.finfo(dtype).eps * 4


def assert_close(actual, desired, rtol, atol=0.0):
    """|actual - desired| <= atol + rtol |desired| elementwise; atol may be an array (per-row scales)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    bad = ~(np.abs(actual - desired) <= atol + rtol * np.abs(desired))
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ; first: {actual[bad][:3]} vs {desired[bad][:3]}"


SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 0.0, -0.0, 3e38, -3e38]


def special_arrays(shape, dtype=np.float32, scale=1.0, huge=True):
    """Hypothesis arrays of `shape` mixing N(0, scale)-sized values with NaN, +-inf, denormals,
    +-0 and (if huge) +-3e38, usually a few specials among ordinary values (sometimes none, sometimes
    many)."""
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
    ordinary = st.floats(-4 * scale, 4 * scale, width=32, allow_subnormal=False)
    specials = st.sampled_from([v for v in SPECIAL_VALUES if huge or abs(v) != 3e38])
    density = st.sampled_from([0.0, 0.02, 0.1, 0.5])

    @st.composite
    def build(draw):
        base = draw(arrays(dtype, shape, elements=ordinary))
        p = draw(density)
        mask = draw(arrays(np.float64, shape, elements=st.floats(0, 1))) < p
        values = draw(arrays(dtype, shape, elements=specials))
        return np.where(mask, values, base).astype(dtype)
    return build()
