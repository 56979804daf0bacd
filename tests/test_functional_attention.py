import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_like, attention_configs, key_padding_masks


@st.composite
def attention_case(draw, even_head_dim=False):
    """q, k, v for a generated config plus a random choice of every option F.attention has."""
    cfg = draw(attention_configs(even_head_dim=even_head_dim))
    B, H, Hkv, T, S, D = (cfg[n] for n in ("B", "H", "Hkv", "T", "S", "D"))
    q = draw(arrays_like((B, H, T, D)))
    k = draw(arrays_like((B, Hkv, S, D)))
    v = draw(arrays_like((B, Hkv, S, D)))
    options = dict(
        causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.integers(1, S + 1))),
        alibi_slopes=F.alibi_slopes(H).astype(np.float64) if draw(st.booleans()) else None,
        key_padding_mask=draw(key_padding_masks(B, S)) if draw(st.booleans()) else None,
    )
    return q, k, v, options


def attention_by_loops(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """The definition, one query of one head at a time: the oracle for F.attention's forward."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            for i in range(T):
                pos = S - T + i
                scores, values = [], []
                for j in range(S):
                    if causal and j > pos:
                        continue
                    if window is not None and abs(pos - j) >= window:
                        continue
                    if key_padding_mask is not None and not key_padding_mask[b, j]:
                        continue
                    s = float(q[b, h, i] @ k[b, kv, j]) / math.sqrt(D)
                    if alibi_slopes is not None:
                        s -= alibi_slopes[h] * (pos - j if causal else abs(pos - j))
                    scores.append(s)
                    values.append(v[b, kv, j])
                if scores:
                    w = np.exp(np.array(scores) - max(scores))
                    out[b, h, i] = (w / w.sum()) @ np.array(values)
    return out


@given(attention_case())
def test_attention_forward_matches_a_per_head_loop(case):
    q, k, v, options = case
    np.testing.assert_allclose(F.attention(q, k, v, **options).data, attention_by_loops(q, k, v, **options),
                               rtol=1e-10, atol=1e-12)


@given(attention_case())
def test_attention_gradient(case):
    q, k, v, options = case
    gradcheck(lambda q, k, v: F.attention(q, k, v, **options), [q, k, v])


def test_attention_gradient_with_a_single_visible_key_per_row():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 4, 3, 5)), rng.normal(size=(2, 2, 3, 5)), rng.normal(size=(2, 2, 3, 5))
    mask = np.array([[True, False, False], [False, False, True]])
    gradcheck(lambda q, k, v: F.attention(q, k, v, causal=False, key_padding_mask=mask), [q, k, v])
    out = F.attention(q, k, v, causal=False, key_padding_mask=mask).data
    np.testing.assert_allclose(out[0], np.repeat(v[0, :, :1], 2, axis=0).repeat(3, axis=1))


def test_a_query_that_sees_no_key_gets_zeros_and_zero_gradients():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(1, 2, 2, 4)), rng.normal(size=(1, 2, 2, 4)), rng.normal(size=(1, 2, 2, 4))
    mask = np.array([[False, True]])         # causal: query 0 sees only key 0, which is padding
    out = F.attention(q, k, v, causal=True, key_padding_mask=mask)
    assert np.isfinite(out.data).all()
    np.testing.assert_array_equal(out.data[:, :, 0], 0.0)
    gradcheck(lambda q, k, v: F.attention(q, k, v, causal=True, key_padding_mask=mask), [q, k, v])


def test_gqa_equals_mha_with_repeated_kv_heads():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(2, 6, 4, 8)), rng.normal(size=(2, 2, 4, 8)), rng.normal(size=(2, 2, 4, 8))
    gqa = F.attention(q, k, v).data
    mha = F.attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)).data
    np.testing.assert_allclose(gqa, mha, rtol=1e-12)


def test_decode_step_equals_the_last_row_of_the_full_pass():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(1, 2, 5, 4)), rng.normal(size=(1, 1, 5, 4)), rng.normal(size=(1, 1, 5, 4))
    full = F.attention(q, k, v, causal=True, window=3).data
    last = F.attention(q[:, :, -1:], k, v, causal=True, window=3).data
    np.testing.assert_allclose(last, full[:, :, -1:], rtol=1e-12)


@given(attention_case(even_head_dim=True), st.booleans())
def test_rope_gradient(case, per_batch):
    q = case[0]
    B, H, T, D = q.shape
    positions = np.arange(T) + 3 if not per_batch else np.arange(B * T).reshape(B, T)
    gradcheck(lambda x: F.rope(x, positions, theta=100.0), [q])


def test_rope_makes_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(1, 1, 1, 8)), rng.normal(size=(1, 1, 1, 8))
    def score(m, n):
        return float(F.rope(q, np.array([m])).data.ravel() @ F.rope(k, np.array([n])).data.ravel())
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-10)
    assert score(0, 0) == pytest.approx(float(q.ravel() @ k.ravel()), rel=1e-12)
    rotated = F.rope(q, np.array([7])).data.ravel()          # a rotation keeps each pair's length
    pairs = lambda x: np.hypot(x[:4], x[4:])                  # noqa: E731 (rotate-half pairs i, i + D/2)
    np.testing.assert_allclose(pairs(rotated), pairs(q.ravel()), rtol=1e-12)


def test_rope_rotates_pair_zero_by_the_position():
    x = np.zeros((1, 1, 1, 4))
    x[..., 0] = 1.0                                           # pair 0 = (x_0, x_2), frequency 1
    y = F.rope(x, np.array([2])).data.ravel()
    np.testing.assert_allclose([y[0], y[2]], [math.cos(2), math.sin(2)], rtol=1e-12)


def test_sinusoidal_positions_and_alibi_slopes():
    pe = F.sinusoidal_positions(4, 6)
    assert pe.shape == (4, 6) and pe.dtype == np.float32
    np.testing.assert_allclose(pe[3, 0], math.sin(3), rtol=1e-6)
    np.testing.assert_allclose(pe[3, 1], math.cos(3), rtol=1e-6)
    np.testing.assert_allclose(pe[3, 4], math.sin(3 / 10000 ** (4 / 6)), rtol=1e-6)
    assert F.sinusoidal_positions(3, 5).shape == (3, 5)
    for T, C in [(7, 6), (5, 9)]:              # every entry, by the definition, for even and odd C
        table = F.sinusoidal_positions(T, C, dtype=np.float64)
        for p in range(T):
            for c in range(C):
                angle = p / 10000 ** (2 * (c // 2) / C)
                assert table[p, c] == pytest.approx(math.sin(angle) if c % 2 == 0 else math.cos(angle), abs=1e-12)
    np.testing.assert_allclose(F.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
    np.testing.assert_allclose(F.alibi_slopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])


def test_attention_bad_input_names_the_shapes():
    q, k = np.zeros((1, 6, 2, 4)), np.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="q has 6 heads but k has 4; n_heads must be a multiple of n_kv_heads"):
        F.attention(q, k, k)
    with pytest.raises(ValueError, match="k has shape .* but v has shape"):
        F.attention(q, np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        F.attention(np.zeros((6, 2, 4)), k, k)
    with pytest.raises(ValueError, match="head dim"):
        F.attention(q, np.zeros((1, 2, 2, 5)), np.zeros((1, 2, 2, 5)))
    with pytest.raises(ValueError, match="window must be a positive int"):
        F.attention(q, q, q, window=0)
    with pytest.raises(ValueError, match=r"alibi_slopes has shape \(4,\)"):
        F.attention(q, q, q, alibi_slopes=np.ones(4))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape"):
        F.attention(q, q, q, key_padding_mask=np.ones((1, 3), bool))
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        F.attention(q, q, q, key_padding_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="D = 3 must be even"):
        F.rope(np.zeros((1, 1, 2, 3)), np.arange(2))
    with pytest.raises(ValueError, match="positions has shape"):
        F.rope(np.zeros((1, 1, 2, 4)), np.arange(3))
