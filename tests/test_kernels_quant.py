"""Quantized weights: each scheme's round trip stays within its theoretical bound; the native
activation quantization equals the reference bit for bit; the native quantized matmul equals the
reference (exactly when every scale is 1, so only integer arithmetic is left; to float rounding
otherwise), on the AVX2 and the scalar path; bad arrays get a clear error."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.kernels.reference.quant import GROUP, SCHEMES, pack_int4, unpack_int4

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")
FAMILY = "quant_matmul"   # the simd_path fixture runs each test on every path this family has

if native.AVAILABLE:
    from minillm.kernels.native import quant as native_quant

from kernel_parity import family, simd_path, special_arrays  # noqa: E402,F401 (simd_path is a fixture)

ROWS = st.one_of(st.integers(1, 9), st.sampled_from([63, 64, 65, 130]))
GROUPS = st.integers(1, 12)
SEEDS = st.integers(0, 2**32 - 1)


def in_features(scheme, groups, tail):
    """K: whole groups, plus a short tail for int8 per channel (the only scheme that allows one)."""
    return groups * GROUP + (tail if scheme == "int8" else 0)


@given(scheme=st.sampled_from(SCHEMES), N=ROWS, groups=GROUPS, tail=st.integers(0, 31), seed=SEEDS,
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_dequantized_weights_are_within_half_a_step(scheme, N, groups, tail, seed, scale):
    K = in_features(scheme, groups, tail)
    w = (np.random.default_rng(seed).standard_normal((N, K)) * scale).astype(np.float32)
    qw = reference.quantize_weights(w, scheme)
    err = np.abs(reference.dequantize_weights(scheme, **qw) - w)
    step = qw["scale"][:, None] if scheme == "int8" else np.repeat(qw["scale"], GROUP, axis=1)   # d per value
    # round to nearest: |w - q d| <= d / 2, plus float32 rounding of q * d (+ min)
    assert np.all(err <= step / 2 * (1 + 1e-5) + 4e-7 * np.abs(w).max())


@given(scheme=st.sampled_from(SCHEMES), N=ROWS, groups=GROUPS, seed=SEEDS)
def test_quantized_values_use_the_schemes_range(scheme, N, groups, seed):
    w = np.random.default_rng(seed).standard_normal((N, groups * GROUP)).astype(np.float32)
    q = reference.quantize_weights(w, scheme)["q"]
    values = q.astype(np.int32) if scheme in ("int8", "q8_0") else unpack_int4(q).astype(np.int32)
    low, high = {"int8": (-127, 127), "q8_0": (-127, 127), "q4_0": (1, 15), "q4_1": (0, 15)}[scheme]
    assert values.min() >= low and values.max() <= high
    assert values.max() == high or values.min() == low      # the largest magnitude reaches the end of the range


def test_int4_packing_is_llama_cpp_order():
    values = np.arange(64, dtype=np.uint8).reshape(1, 64) % 16
    packed = pack_int4(values)
    assert packed.shape == (1, 32)
    assert packed[0, 0] == values[0, 0] | (values[0, 16] << 4)      # byte j: value j low, value j + 16 high
    assert packed[0, 16] == values[0, 32] | (values[0, 48] << 4)
    np.testing.assert_array_equal(unpack_int4(packed), values)


@family("quantize_activations")
@given(M=ROWS, K=st.integers(1, 200), seed=SEEDS, zero_group=st.booleans())
def test_native_activation_quantization_is_bitwise_the_reference(simd_path, M, K, seed, zero_group):
    x = np.random.default_rng(seed).standard_normal((M, K)).astype(np.float32) * 3
    if zero_group:
        x[:, :GROUP] = 0.0                                             # d = 0 must give q = 0, not NaN
    for got, want in zip(native_quant.quantize_activations(x), reference.quantize_activations(x)):
        np.testing.assert_array_equal(got, want)


def weight_magnitude(scheme, qw):
    """|W| per value as the kernels sum it: |q d|, plus |m| for q4_1 (its min term is added separately
    and may cancel against the scaled integer sum)."""
    w = np.abs(reference.dequantize_weights(scheme, **qw))
    if scheme == "q4_1":
        w = np.abs(reference.dequantize_weights(scheme, qw["q"], qw["scale"], np.zeros_like(qw["min"])))
        w += np.repeat(np.abs(qw["min"]), GROUP, axis=1)
    return w.astype(np.float64)


def integer_operands(rng, scheme, M, N, K):
    """x and W whose every group has scale 1, so the quantized matmul is exact integer arithmetic."""
    x = rng.integers(-127, 128, (M, K)).astype(np.float32)
    x[:, ::GROUP] = 127                                                # each group's max |x| is 127: d = 1
    if scheme == "q4_1":
        w = rng.integers(-5, 11, (N, K)).astype(np.float32)
        w[:, ::GROUP], w[:, 1::GROUP] = -5, 10                         # min -5, (max - min) / 15 = 1
    else:
        levels = 7 if scheme == "q4_0" else 127
        w = rng.integers(-levels, levels + 1, (N, K)).astype(np.float32)
        w[:, ::GROUP] = levels
        if scheme == "int8":
            w[:, 0] = 127                                              # per channel: the row's max is 127
    return x, w


@given(scheme=st.sampled_from(SCHEMES), M=ROWS, N=ROWS, groups=GROUPS, tail=st.integers(0, 31), seed=SEEDS)
def test_native_quant_matmul_is_exact_on_integer_data(simd_path, scheme, M, N, groups, tail, seed):
    K = in_features(scheme, groups, tail)
    x, w = integer_operands(np.random.default_rng(seed), scheme, M, N, K)
    qw = reference.quantize_weights(w, scheme)
    expected = x.astype(np.int64) @ w.astype(np.int64).T              # |sums| < 2^24: exact in float32
    np.testing.assert_array_equal(reference.quant_matmul(x, scheme, **qw), expected)
    np.testing.assert_array_equal(native_quant.quant_matmul(x, scheme, **qw), expected)


@given(scheme=st.sampled_from(SCHEMES), M=ROWS, N=ROWS, groups=GROUPS, tail=st.integers(0, 31), seed=SEEDS,
       bias=st.booleans())
def test_native_quant_matmul_equals_reference(simd_path, scheme, M, N, groups, tail, seed, bias):
    K = in_features(scheme, groups, tail)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    qw = reference.quantize_weights(rng.standard_normal((N, K)).astype(np.float32), scheme)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    want = reference.quant_matmul(x, scheme, **qw, bias=b)
    got = native_quant.quant_matmul(x, scheme, **qw, bias=b)
    # same integer sums; only the float sum over K / 32 scaled groups is ordered differently
    magnitude = np.abs(x) @ weight_magnitude(scheme, qw).T + (np.abs(b) if bias else 0)
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * magnitude + 1e-6)


@given(scheme=st.sampled_from(SCHEMES), M=st.integers(1, 6), N=st.integers(1, 40), seed=SEEDS)
def test_quant_matmul_approximates_the_float_product(scheme, M, N, seed):
    """The error of x W^T is bounded by the two quantization steps: |x| |W - Wq| + |x - xq| |Wq|."""
    rng = np.random.default_rng(seed)
    K = 4 * GROUP
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    qw = reference.quantize_weights(w, scheme)
    wq = reference.dequantize_weights(scheme, **qw)
    xq, xd, _ = reference.quantize_activations(x)
    x_err = np.abs(x - xq * np.repeat(xd, GROUP, axis=1))
    bound = np.abs(x) @ np.abs(w - wq).T + x_err @ np.abs(wq).T
    got = native_quant.quant_matmul(x, scheme, **qw)
    assert np.all(np.abs(got - x @ w.T) <= bound * (1 + 1e-4) + 1e-4)


@family("quantize_activations")
@given(data=st.data(), M=st.integers(1, 5), K=st.integers(1, 100))
def test_activation_quantization_of_nan_inf_and_denormals_is_the_reference(simd_path, data, M, K):
    """Bit for bit on inputs with NaN, +-inf, denormals and +-3e38: a group holding NaN or inf gives
    xq = 0 and xd = xs = NaN; denormals keep their sign."""
    x = data.draw(special_arrays((M, K)))
    got, want = native_quant.quantize_activations(x), reference.quantize_activations(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)                       # NaN == NaN for assert_array_equal
    xq, xd, _ = want
    G = xd.shape[1]
    for g in range(G):
        group = x[:, g * GROUP:(g + 1) * GROUP]
        assert np.array_equal(np.isnan(xd[:, g]), ~np.isfinite(group).all(axis=1))
        tiny = np.isfinite(group).all(axis=1, keepdims=True) & (np.abs(group).max(axis=1, keepdims=True) < 1e-37)
        q = xq[:, g * GROUP:(g + 1) * GROUP]
        assert np.all(np.sign(q[np.broadcast_to(tiny, q.shape)]) * np.sign(group[np.broadcast_to(tiny, q.shape)]) >= 0)


@pytest.mark.parametrize("values", [[1e-40, -3e-41, 2e-44, -1.4e-45], [2e-44, -1.4e-45, 7e-45, 0.0]])
def test_denormal_activations_keep_their_sign_and_size(values):
    """Within half a step of the original, the step d >= 2^-149, and no sign flipped."""
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = values
    for impl in (reference, native_quant):
        xq, xd, _ = impl.quantize_activations(x)
        d = np.float64(xd[0, 0])
        assert d >= 2.0 ** -149
        assert np.all(np.abs(xq[0].astype(np.float64) * d - x[0]) <= d / 2 + 2.0 ** -149)
        assert np.all(np.sign(xq[0]) * np.sign(x[0]) >= 0) and xq[0, 0] != 0


@given(data=st.data(), scheme=st.sampled_from(SCHEMES), M=st.integers(1, 7), N=st.integers(1, 20),
       groups=st.integers(1, 4), seed=SEEDS)
def test_quant_matmul_propagates_nan_like_the_reference(simd_path, data, scheme, M, N, groups, seed):
    """A row of x with NaN or inf in any group gives a row of NaN, in both implementations; rows whose
    sums cannot overflow float32 agree to float rounding, whatever denormals or zeros they hold."""
    K = groups * GROUP
    x = data.draw(special_arrays((M, K)))
    qw = reference.quantize_weights(np.random.default_rng(seed).standard_normal((N, K)).astype(np.float32), scheme)
    want, got = reference.quant_matmul(x, scheme, **qw), native_quant.quant_matmul(x, scheme, **qw)
    poisoned = ~np.isfinite(x).all(axis=1)
    assert np.isnan(want[poisoned]).all() and np.isnan(got[poisoned]).all()
    magnitude = np.abs(np.nan_to_num(x, posinf=0, neginf=0)).astype(np.float64) @ weight_magnitude(scheme, qw).T
    # The VNNI kernels scale each 4-byte lane's partial sum (up to ~6.5e5 with the +128 offset) by the group's
    # xd = max|x| / 127 before adding the lanes, so a row whose largest |x| passes ~6.6e34 may overflow to
    # NaN even where the exact sum is small (docs/quantization.md): those rows are left out here.
    largest = np.abs(np.nan_to_num(x, posinf=0, neginf=0)).max(axis=1, keepdims=True)
    safe = ~poisoned[:, None] & (magnitude < 1e36) & (largest < 1e34)
    assert np.isfinite(got[safe]).all()
    np.testing.assert_array_less(np.abs(got[safe] - want[safe]), 1e-5 * magnitude[safe] + 1e-30)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1"])
def test_group_schemes_need_a_multiple_of_32(scheme):
    with pytest.raises(ValueError, match="multiple of 32"):
        reference.quantize_weights(np.ones((4, 40), np.float32), scheme)


def test_bad_arguments_are_clear_errors():
    rng = np.random.default_rng(0)
    qw = reference.quantize_weights(rng.standard_normal((8, 64)).astype(np.float32), "q4_0")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="scheme must be one of"):
        native_quant.quant_matmul(x, "q5_0", **qw)
    with pytest.raises(ValueError, match="q must be uint8"):
        native_quant.quant_matmul(x, "q4_0", qw["q"].view(np.int8), qw["scale"])
    with pytest.raises(ValueError, match="q must be"):
        native_quant.quant_matmul(rng.standard_normal((2, 96)).astype(np.float32), "q4_0", **qw)
    with pytest.raises(ValueError, match="scale must be"):
        native_quant.quant_matmul(x, "q4_0", qw["q"], qw["scale"][:, :1].copy())
    with pytest.raises(ValueError, match="q4_1 needs min"):
        native_quant.quant_matmul(x, "q4_1", **qw)
    with pytest.raises(ValueError, match="C-contiguous"):
        native_quant.quant_matmul(x, "q4_0", np.asfortranarray(qw["q"]), qw["scale"])
    with pytest.raises(ValueError, match="bias must be"):
        native_quant.quant_matmul(x, "q4_0", **qw, bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        reference.quantize_weights(np.full((2, 32), np.nan, np.float32), "q8_0")
