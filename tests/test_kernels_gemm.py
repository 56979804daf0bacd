"""The native GEMM equals the reference (A @ B in float64) for every transpose, accumulate and
bias, on the AVX2 and the scalar path, over shapes from 1 to past the block sizes; the native
linear and SwiGLU built on it equal theirs; bad arrays get ValueError/TypeError, never a crash."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "gemm"   # the simd_path fixture runs each test on every path this family has

if native.AVAILABLE:
    from minillm.kernels.native import linear as native_linear

from kernel_parity import simd_path, tolerance  # noqa: E402,F401 (simd_path is a fixture)

SIDES = st.one_of(st.integers(1, 40), st.sampled_from([1, 5, 6, 7, 15, 16, 17, 143, 144, 145, 257, 300]))


def operands(rng, M, K, N, ta, tb, dtype):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    return a, b


def check(c, expected, K, dtype):
    """Each entry is a length-K dot product of N(0, 1) values: error ~ K eps sqrt(K)."""
    scale = np.sqrt(K) + 1.0
    np.testing.assert_allclose(c, expected, rtol=tolerance(dtype, K), atol=tolerance(dtype, K) * scale)


@given(M=SIDES, K=SIDES, N=SIDES, ta=st.booleans(), tb=st.booleans(), bias=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_gemm_equals_reference(simd_path, M, K, N, ta, tb, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = operands(rng, M, K, N, ta, tb, dtype)
    bias_vec = rng.standard_normal(N).astype(dtype) if bias else None
    expected = reference.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    if bias:
        expected = expected + bias_vec
    c = native._C.matmul(a, b, ta, tb, None, False, bias_vec)
    assert c.dtype == dtype and c.shape == (M, N)
    check(c, expected, K, dtype)


@given(M=SIDES, K=SIDES, N=SIDES, ta=st.booleans(), tb=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gemm_accumulates_into_out(simd_path, M, K, N, ta, tb, seed):
    rng = np.random.default_rng(seed)
    a, b = operands(rng, M, K, N, ta, tb, np.float32)
    start = rng.standard_normal((M, N)).astype(np.float32)
    out = start.copy()
    result = native_linear.matmul(a, b, ta, tb, out=out, accumulate=True)
    assert result is out or np.shares_memory(result, out)
    check(out, start + reference.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb), K + 1, np.float32)
    native_linear.matmul(a, b, ta, tb, out=out)          # out= without accumulate overwrites
    check(out, reference.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb), K, np.float32)


def test_reference_matmul_writes_or_adds_into_out():
    rng = np.random.default_rng(5)
    a, b, start = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
    out = start.copy()
    assert reference.matmul(a, b, trans_b=True, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, start + a @ b.T, rtol=1e-14)
    reference.matmul(a.T.copy(), b, trans_a=True, trans_b=True, out=out)
    np.testing.assert_allclose(out, a @ b.T, rtol=1e-14)
    with pytest.raises(ValueError, match="matmul: accumulate=True needs out= to add into"):
        reference.matmul(a, b.T, accumulate=True)


@pytest.fixture
def small_blocks():
    """Tiny block sizes (KC 24, MC 2 slivers, NC 2 slivers), so small shapes cross every loop of
    the blocked GEMM: several NC panels, KC blocks and row and column tasks."""
    yield native._C.gemm_blocks(kc=24, mc=30, nc=40)
    native._C.gemm_blocks()


@given(M=st.integers(2, 130), K=st.integers(1, 90), N=st.integers(1, 130), ta=st.booleans(), tb=st.booleans(),
       accumulate=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_gemm_with_small_blocks_crosses_every_loop(simd_path, small_blocks, M, K, N, ta, tb, accumulate, threads,
                                                   seed):
    rng = np.random.default_rng(seed)
    a, b = operands(rng, M, K, N, ta, tb, np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    start = rng.standard_normal((M, N)).astype(np.float32)
    expected = reference.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    expected = expected + (start if accumulate else bias)
    before = native._C.get_num_threads()
    native._C.set_num_threads(threads)
    try:
        out = start.copy()
        native._C.matmul(a, b, ta, tb, out, accumulate, None if accumulate else bias)
    finally:
        native._C.set_num_threads(before)
    check(out, expected, K + 1, np.float32)


def test_gemm_blocks_come_from_the_cache_sizes():
    kc, mc, nc = native._C.gemm_blocks()
    assert 64 <= kc <= 1024 and mc >= 1 and nc >= 1
    assert native._C.gemm_blocks(kc=24, mc=30, nc=40, N=1000, K=100)[0] <= 32    # an override is used
    assert native._C.gemm_blocks() == (kc, mc, nc)                                # 0 = back to the caches
    with pytest.raises(ValueError, match=">= 0"):
        native._C.gemm_blocks(kc=-1)


def test_gemm_with_k_zero_is_the_bias_or_leaves_out_alone():
    a, b = np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)
    bias = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(native._C.matmul(a, b, bias=bias), np.tile(bias, (3, 1)))
    out = np.ones((3, 4), np.float32)
    native._C.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, 1.0)
    assert native._C.matmul(np.zeros((0, 5), np.float32), np.zeros((5, 2), np.float32)).shape == (0, 2)


@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3), n_in=SIDES, n_out=SIDES, bias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_native_linear_equals_reference(lead, n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, n_in))
    w = rng.standard_normal((n_out, n_in))
    b = rng.standard_normal(n_out) if bias else None
    dy = rng.standard_normal((*lead, n_out))
    np.testing.assert_allclose(native_linear.linear_forward(x, w, b), reference.linear_forward(x, w, b), rtol=1e-12,
                               atol=1e-12 * n_in)
    for ours, ref in zip(native_linear.linear_backward(dy, x, w, bias), reference.linear_backward(dy, x, w, bias)):
        if ref is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-11 * max(n_in, n_out, x.size // n_in))


@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), C=st.integers(1, 20), F=st.integers(1, 20),
       seed=st.integers(0, 2**32 - 1))
def test_native_swiglu_equals_reference(lead, C, F, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((*lead, C)), rng.standard_normal((*lead, C))
    wg, wu, wd = rng.standard_normal((F, C)), rng.standard_normal((F, C)), rng.standard_normal((C, F))
    ours, ref = native_linear.swiglu_forward(x, wg, wu, wd), reference.swiglu_forward(x, wg, wu, wd)
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-11, atol=1e-11 * (C + F))
    for o, r in zip(native_linear.swiglu_backward(dy, x, wg, wu, wd, *ref[1:]),
                    reference.swiglu_backward(dy, x, wg, wu, wd, *ref[1:])):
        np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-10 * (C + F) * x.size)


def test_matmul_bad_input_is_rejected():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"inner dimensions must match"):
        native._C.matmul(a, b, False, True)
    with pytest.raises(ValueError, match="same dtype"):
        native._C.matmul(a, b.astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        native._C.matmul(a[0], b)
    with pytest.raises(ValueError, match="C-contiguous"):
        native._C.matmul(np.ones((3, 2), np.float32).T, b)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        native._C.matmul(a, b, accumulate=True)
    with pytest.raises(ValueError, match=r"out must be \(2, 4\)"):
        native._C.matmul(a, b, out=np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"bias must be \(4,\)"):
        native._C.matmul(a, b, bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="must not overlap"):
        native._C.matmul(a, np.ones((3, 3), np.float32), out=a)      # out is a itself
    readonly = np.ones((2, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        native._C.matmul(a, b, out=readonly)
    with pytest.raises(ValueError, match="float32 or float64"):
        native._C.matmul(a.astype(np.int32), b.astype(np.int32))
    with pytest.raises(TypeError):
        native._C.matmul(a, b, out=[[0.0] * 4] * 2)


@given(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.lists(st.integers(0, 4), min_size=0, max_size=3),
       st.sampled_from([np.float32, np.float64, np.int64, np.float16]), st.booleans(), st.booleans(), st.booleans())
def test_fuzz_matmul_never_crashes(shape_a, shape_b, dtype, ta, tb, transpose_view):
    a, b = np.ones(shape_a, dtype), np.ones(shape_b, dtype)
    if transpose_view:
        a = a.T
    try:
        c = native._C.matmul(a, b, ta, tb)
    except (ValueError, TypeError):
        return
    K = a.shape[0] if ta else a.shape[1]   # accepted: valid 2-D operands, and C is all K
    assert np.all(c == K)
