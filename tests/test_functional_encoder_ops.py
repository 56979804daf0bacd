"""The ops the encoder families add, on both backends: GELU's exact form and ReLU, attention with an
additive bias and a free scale (T5), cross-attention shapes (T != S, padding in the source, left or
right), and T5's relative position bias, each gradchecked in float64 and held to its definition."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm import kernels
from minillm.autograd import Tensor
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64, shapes


@given(arrays_f64(shapes(max_dims=3), low=-6, high=6))
def test_gelu_exact_gradient_and_definition(x):
    gradcheck(lambda t: F.gelu(t, approximate="none"), [x])
    want = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)
    np.testing.assert_allclose(F.gelu(x, approximate="none").data, want, rtol=1e-12, atol=1e-15)


@given(arrays_f64(shapes(max_dims=2), low=-6, high=6))
def test_gelu_defaults_to_tanh_and_both_forms_stay_close(x):
    np.testing.assert_array_equal(F.gelu(x).data, F.gelu(x, approximate="tanh").data)
    assert np.all(np.abs(F.gelu(x).data - F.gelu(x, approximate="none").data) < 1e-3)   # the tanh fit's error


def test_gelu_rejects_an_unknown_form():
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none'"):
        F.gelu(np.ones(3), approximate="erf")


@given(arrays_f64(shapes(max_dims=3), low=-3, high=3).filter(lambda a: np.all(np.abs(a) > 1e-3)))
def test_relu_gradient_and_definition(x):
    gradcheck(F.relu, [x])
    np.testing.assert_array_equal(F.relu(x).data, np.maximum(x, 0))


@st.composite
def biased_attention_cases(draw):
    """q, k, v, bias and a source padding mask with T != S allowed, padding on the left or the right."""
    B, Hkv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H = Hkv * draw(st.integers(1, 2))
    T, S, D = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 2, 3, 4]))
    causal = draw(st.booleans()) and T <= S
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = None
    if draw(st.booleans()) and S > 1:
        mask = np.ones((B, S), bool)
        for b in range(B):
            pad = draw(st.integers(0, S - 1))
            if draw(st.booleans()):
                mask[b, S - pad:] = False if pad else True          # right padding
            else:
                mask[b, :pad] = False                               # left padding
        if causal:
            mask[:, 0] = True             # every causal query sees the first key
    per_batch = draw(st.booleans())
    bias = rng.standard_normal((B, H, T, S) if per_batch else (H, T, S))
    scale = draw(st.sampled_from([None, 1.0, 0.3]))
    q, k, v = (rng.standard_normal(s) for s in ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    return dict(q=q, k=k, v=v, bias=bias, mask=mask, causal=causal, scale=scale)


def definition(q, k, v, bias, mask, causal, scale):
    """softmax(scale q k^T + bias + mask) v, one head and batch row at a time."""
    B, H, T, D = q.shape
    S, group = k.shape[2], H // k.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            s = scale * q[b, h] @ k[b, h // group].T + (bias[b, h] if bias.ndim == 4 else bias[h])
            keep = np.ones((T, S), bool) if mask is None else np.broadcast_to(mask[b], (T, S)).copy()
            if causal:
                keep &= np.arange(S)[None, :] <= np.arange(S - T, S)[:, None]
            s = np.where(keep, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[b, h] = (p / p.sum(axis=1, keepdims=True)) @ v[b, h // group]
    return out


@given(biased_attention_cases())
def test_biased_attention_matches_its_definition(case):
    got = F.attention(case["q"], case["k"], case["v"], causal=case["causal"], key_padding_mask=case["mask"],
                      bias=case["bias"], scale=case["scale"]).data
    np.testing.assert_allclose(got, definition(**case), rtol=1e-10, atol=1e-12)


@given(biased_attention_cases())
def test_biased_attention_gradient_reaches_q_k_v_and_the_bias(case):
    def run(q, k, v, bias):
        return F.attention(q, k, v, causal=case["causal"], key_padding_mask=case["mask"], bias=bias, scale=case["scale"])
    gradcheck(run, [case["q"], case["k"], case["v"], case["bias"]])


@given(biased_attention_cases())
def test_a_zero_bias_and_the_default_scale_give_plain_attention(case):
    """The reference with a bias input agrees with F.attention's kernel (native on that backend)."""
    plain = F.attention(case["q"], case["k"], case["v"], causal=case["causal"], key_padding_mask=case["mask"]).data
    zero = F.attention(case["q"], case["k"], case["v"], causal=case["causal"], key_padding_mask=case["mask"],
                       bias=np.zeros_like(case["bias"])).data
    np.testing.assert_allclose(zero, plain, rtol=1e-10, atol=1e-12)


def test_unscaled_attention_is_attention_of_a_query_scaled_by_sqrt_d():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 2, 5, 4))
    np.testing.assert_allclose(F.attention(q, k, v, causal=False, scale=1.0).data,
                               F.attention(q * 2.0, k, v, causal=False).data, rtol=1e-12)


def test_biased_attention_bad_input_is_named():
    q, k = np.ones((1, 2, 3, 4)), np.ones((1, 2, 5, 4))
    with pytest.raises(ValueError, match=r"bias has shape \(2, 3, 4\); it must be \(2, 3, 5\)"):
        F.attention(q, k, k, causal=False, bias=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        F.attention(q, k, k, causal=False, scale=float("nan"))
    with pytest.raises(ValueError, match="do not combine with window"):
        F.attention(q, k, k, causal=False, bias=np.ones((2, 3, 5)), window=2)


@given(T=st.integers(1, 6), S=st.integers(1, 7), H=st.integers(1, 3), bidirectional=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_relative_position_bias_gradient_and_lookup(T, S, H, bidirectional, seed):
    buckets = kernels.relative_position_buckets(np.arange(S - T, S), np.arange(S), bidirectional, 8, 16)
    table = np.random.default_rng(seed).standard_normal((8, H))
    gradcheck(lambda t: F.relative_position_bias(t, buckets), [table])
    bias = F.relative_position_bias(table, buckets).data
    assert bias.shape == (H, T, S)
    for i in range(T):
        for j in range(S):
            np.testing.assert_array_equal(bias[:, i, j], table[buckets[i, j]])


def test_relative_position_bias_gradient_flows_through_attention():
    rng = np.random.default_rng(1)
    buckets = kernels.relative_position_buckets(np.arange(4), np.arange(4), True, 6, 8)
    q, k, v = (rng.standard_normal((2, 3, 4, 2)) for _ in range(3))
    gradcheck(lambda table: F.attention(q, k, v, causal=False, bias=F.relative_position_bias(table, buckets),
                                        scale=1.0), [rng.standard_normal((6, 3))])


def test_buckets_are_exact_near_and_logarithmic_far():
    r = np.arange(-40, 41)
    b = kernels.relative_position_buckets(np.zeros(1, int), r, True, 32, 128)[0]   # key - query = r
    assert b[40] == 0 and list(b[41:48]) == list(range(17, 24))   # r = 0, then 1..7 (keys after: the upper half)
    assert list(b[33:40][::-1]) == list(range(1, 8))           # r = -1..-7: one bucket per distance
    assert b[0] == b[1] == 12 and b[-1] == b[-2] == 28         # far away, neighbours share a bucket
    c = kernels.relative_position_buckets(np.array([10]), np.arange(20), False, 32, 128)[0]
    assert list(c[:11][::-1]) == list(range(11)) and np.all(c[11:] == 0)   # causal: keys after the query all 0


def test_relative_position_bias_rejects_buckets_outside_the_table():
    with pytest.raises(ValueError, match="outside"):
        F.relative_position_bias(np.ones((4, 2)), np.array([[0, 4]]))
    with pytest.raises(ValueError, match="2 dimensions"):
        F.relative_position_bias(Tensor(np.ones(4)), np.array([[0]]))
