"""Linear attention (elu + 1 features, Katharopoulos et al. 2020): the native running sums
(csrc/linear_attention.cpp, one portable version) equal the (T, T) reference, forward and backward;
F.linear_attention is the definition written as loops, gradchecked, GQA included; the recurrent
decoding state (nn.LinearAttentionState) gives the same outputs one token at a time."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minillm.functional as F
from minillm import nn
from minillm.kernels import native, reference
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_like

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")


def by_loops(q, k, v, causal, eps=1e-6):
    """out_t = sum_j (phi(q_t) . phi(k_j)) v_j / (sum_j phi(q_t) . phi(k_j) + eps), j <= t when causal."""
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))  # noqa: E731
    B, H, T, D = q.shape
    group = H // k.shape[1]
    out = np.zeros((B, H, T, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                js = range(t + 1) if causal else range(T)
                w = np.array([phi(q[b, h, t]) @ phi(k[b, h // group, j]) for j in js])
                out[b, h, t] = w @ v[b, h // group, list(js)] / (w.sum() + eps)
    return out


@st.composite
def cases(draw, dtype=None):
    B, Hkv, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    T, D = draw(st.integers(1, 9)), draw(st.sampled_from([1, 2, 4, 7]))
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    shapes = ((B, Hkv * group, T, D), (B, Hkv, T, D), (B, Hkv, T, D))
    return tuple(draw(arrays_like(s, dtype)) for s in shapes) + (draw(st.booleans()),)


@needs_native
@settings(max_examples=50)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.integers(1, 6), st.integers(1, 5),
       st.booleans(), st.sampled_from([np.float32, np.float64]), st.data())
def test_native_running_sums_equal_the_reference(B, H, T, D, E, causal, dtype, data):
    fq, fk = (np.abs(data.draw(arrays_like((B, H, T, D), dtype))) for _ in range(2))
    v, dout = (data.draw(arrays_like((B, H, T, E), dtype)) for _ in range(2))
    out, den = native.linear_attention.linear_attention_forward(fq, fk, v, causal)
    ref_out, ref_den = reference.linear_attention_forward(fq, fk, v, causal)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(den, ref_den, rtol=tol, atol=tol)
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol * np.abs(ref_out).max(initial=1))
    grads = native.linear_attention.linear_attention_backward(dout, fq, fk, v, out, den, causal)
    ref_grads = reference.linear_attention_backward(dout, fq, fk, v, ref_out, ref_den, causal)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max(initial=1))


@settings(max_examples=25)
@given(cases(dtype=np.float64))
def test_linear_attention_is_its_definition_and_gradients_check(case):
    q, k, v, causal = case
    np.testing.assert_allclose(F.linear_attention(q, k, v, causal=causal).data, by_loops(q, k, v, causal),
                               rtol=1e-9, atol=1e-10)
    gradcheck(lambda q, k, v: F.linear_attention(q, k, v, causal=causal), [q, k, v])


def test_decoding_state_gives_the_same_outputs_token_by_token():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 4, 10, 8)), rng.standard_normal((2, 2, 10, 8)), rng.standard_normal((2, 2, 10, 8))
    want = F.linear_attention(q, k, v).data
    state = nn.LinearAttentionState(2, 4, 8, 8, dtype=np.float64)
    got = [state.step(q[:, :, :4], k[:, :, :4], v[:, :, :4])]             # a prompt, then one token at a time
    got += [state.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1]) for t in range(4, 10)]
    np.testing.assert_allclose(np.concatenate(got, axis=2), want, atol=1e-12)
    assert state.s.shape == (2, 4, 8, 8) and state.length == 10               # the state does not grow


def test_bad_input_is_refused():
    x = np.zeros((1, 1, 3, 2))
    with pytest.raises(ValueError, match="feature_map must be one of"):
        F.linear_attention(x, x, x, feature_map="relu")
    with pytest.raises(ValueError, match="the same"):
        F.linear_attention(x, np.zeros((1, 1, 4, 2)), np.zeros((1, 1, 4, 2)))
    if native.AVAILABLE:
        with pytest.raises(ValueError, match="B, H and T must match"):
            native._C.linear_attention_forward(phi_q=x, phi_k=x, v=np.zeros((1, 1, 4, 2)), causal=True, eps=0.0)


def test_a_linear_attention_model_trains_infers_and_generates_with_constant_state():
    from minillm.generate import generate
    from minillm.models import DecoderLM, ModelConfig
    from minillm.testing import gradcheck_module
    config = ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=8, positions="rope",
                         norm="rmsnorm", activation="swiglu", bias=False, attention="linear")
    model = DecoderLM(config, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 20, size=(2, 12))
    np.testing.assert_allclose(model.infer(ids), model(ids).data, atol=1e-5)
    caches = model.new_caches(2)
    assert all(isinstance(c, nn.LinearAttentionState) for c in caches)
    steps = [model.infer(ids[:, :5], caches=caches)] + [model.infer(ids[:, t:t + 1], caches=caches) for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), model(ids).data, atol=1e-5)
    assert len(generate(model, [[1, 2, 3]], 5, temperature=0)[0]) == 5
    model64 = DecoderLM(ModelConfig(**{**config.to_dict(), "n_layer": 1}), rng=np.random.default_rng(0), dtype=np.float64)
    gradcheck_module(model64, [ids[:1, :6]], forward=lambda m, x: m(x, ids[:1, 1:7])[1])
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(attention="performer")


@needs_native
def test_bitwise_the_same_on_any_number_of_threads():
    before, adaptive = native._C.get_num_threads(), native._C.adaptive_threads()
    native._C.set_adaptive_threads(False)
    rng = np.random.default_rng(0)
    fq, fk = (np.abs(rng.standard_normal((2, 4, 300, 16))).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 4, 300, 16)).astype(np.float32)
    try:
        results = []
        for n in (1, 2, 3):
            native._C.set_num_threads(n)
            out, den = native.linear_attention.linear_attention_forward(fq, fk, v)
            results.append((out, den, *native.linear_attention.linear_attention_backward(v, fq, fk, v, out, den)))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)
    finally:
        native._C.set_num_threads(before)
        native._C.set_adaptive_threads(adaptive)
