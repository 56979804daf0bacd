"""Attention over a KV cache read in place (csrc/kv_attention.cpp) equals the reference, which is
attention_forward on the cache's filled prefix: every option (causal, window, ALiBi, padding),
MHA/GQA/MQA, caches longer than what is filled, float32 and float64, both SIMD paths; and the
binding rejects bad arguments with a ValueError."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.kernels import native, reference
from minillm.kernels.reference.positions import alibi_slopes
from minillm.testing.strategies import arrays_like, attention_configs, key_padding_masks

from kernel_parity import simd_path, tolerance  # noqa: F401 (simd_path is a fixture)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


@st.composite
def cached_inputs(draw):
    cfg = draw(attention_configs(max_len=9))
    B, H, Hkv, T, S, D = (cfg[n] for n in ("B", "H", "Hkv", "T", "S", "D"))
    L = S + draw(st.integers(0, 4))                                     # the cache holds more than is filled
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-2, 1.0, 5.0]))
    q = draw(arrays_like((B, H, T, D), dtype, scale))
    k_cache = draw(arrays_like((B, Hkv, L, D), dtype, scale))
    v_cache = draw(arrays_like((B, Hkv, L, D), dtype))
    options = dict(causal=draw(st.booleans()), window=draw(st.one_of(st.none(), st.integers(1, S + 1))),
                   alibi_slopes=alibi_slopes(H) if draw(st.booleans()) else None,
                   key_padding_mask=draw(key_padding_masks(B, S)) if draw(st.booleans()) else None)
    return q, k_cache, v_cache, S, options


@given(inputs=cached_inputs())
def test_native_kv_attention_equals_attention_on_the_filled_prefix(inputs, simd_path):
    q, k_cache, v_cache, S, options = inputs
    got = native.kv_attention.kv_attention_forward(q, k_cache, v_cache, S, **options)
    want = reference.kv_attention_forward(q, k_cache, v_cache, S, **options)
    want64 = reference.kv_attention_forward(*(a.astype(np.float64) for a in (q, k_cache, v_cache)), S, **options)
    assert got.dtype == q.dtype and got.shape == q.shape
    rtol = tolerance(q.dtype, S * q.shape[-1]) * 50
    np.testing.assert_allclose(got, want64, rtol=rtol, atol=rtol * (1 + np.abs(want64).max()))
    np.testing.assert_allclose(want, want64, rtol=rtol, atol=rtol * (1 + np.abs(want64).max()))


def test_positions_past_length_are_never_read():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 1, 4))
    k, v = rng.standard_normal((2, 1, 2, 6, 4))
    k[:, :, 3:], v[:, :, 3:] = np.nan, np.nan                         # garbage past the filled prefix
    out = native.kv_attention.kv_attention_forward(q, k, v, 3)
    np.testing.assert_allclose(out, reference.attention_forward(q, k[:, :, :3], v[:, :, :3])[0], rtol=1e-12)


def test_kv_attention_binding_rejects_bad_arguments():
    q = np.zeros((1, 2, 1, 4), np.float32)
    kc = np.zeros((1, 2, 5, 4), np.float32)
    call = native._C.kv_attention_forward
    with pytest.raises(ValueError, match="length 6 must cover"):
        call(q=q, k_cache=kc, v_cache=kc, length=6, causal=True, window=0, alibi_slopes=None, key_padding_mask=None)
    with pytest.raises(ValueError, match="length 0 must cover the 1 new queries"):
        call(q=q, k_cache=kc, v_cache=kc, length=0, causal=True, window=0, alibi_slopes=None, key_padding_mask=None)
    with pytest.raises(ValueError, match="q has 2 heads but k_cache has 3"):
        call(q=q, k_cache=np.zeros((1, 3, 5, 4), np.float32), v_cache=np.zeros((1, 3, 5, 4), np.float32), length=2,
             causal=True, window=0, alibi_slopes=None, key_padding_mask=None)
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        call(q=q, k_cache=kc, v_cache=kc, length=3, causal=True, window=0, alibi_slopes=None,
             key_padding_mask=np.ones((1, 5), bool))
    with pytest.raises(ValueError, match="k_cache and v_cache must have the same dtype"):
        call(q=q, k_cache=kc, v_cache=kc.astype(np.float64), length=3, causal=True, window=0, alibi_slopes=None,
             key_padding_mask=None)
    with pytest.raises(ValueError, match="C-contiguous"):
        call(q=q, k_cache=kc[:, :, ::2], v_cache=kc[:, :, ::2], length=2, causal=True, window=0, alibi_slopes=None,
             key_padding_mask=None)
