"""The fused training nodes (F.fused_linear, F.packed_attention, F.linear_cross_entropy) pass the
float64 gradcheck on generated shapes and equal, value and gradients, the compositions of small
nodes they replace; so do the layers and the model built on them (Attention.forward against
Attention.composed, DecoderLM.loss against forward's loss)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm import nn
from minillm.autograd import Tensor
from minillm.kernels.reference.positions import alibi_slopes
from minillm.models import DecoderLM, ModelConfig
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_like, key_padding_masks


def grads_of(fn, arrays, direction_seed=0):
    """(value, gradients of <fn(*tensors), R> for a fixed random R) for float64 inputs."""
    tensors = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(np.random.default_rng(direction_seed).standard_normal(out.shape))
    return out.data, [t.grad for t in tensors]


def assert_same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 2**16), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       C=st.integers(1, 5), lead=st.sampled_from([(3,), (2, 3)]), bias=st.booleans())
def test_fused_linear_passes_gradcheck_and_equals_the_separate_linears(seed, sizes, C, lead, bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, C))
    ws = [rng.standard_normal((n, C)) for n in sizes]
    bs = [rng.standard_normal(n) for n in sizes] if bias else []
    k = len(sizes)

    def fused(x, *p):
        return F.fused_linear(x, list(p[:k]), list(p[k:]) or None)

    def separate(x, *p):
        return F.concat([F.linear(x, w, b) for w, b in zip(p[:k], p[k:] or [None] * k)], axis=-1)

    gradcheck(fused, [x, *ws, *bs])
    value, grads = grads_of(fused, [x, *ws, *bs])
    want_value, want_grads = grads_of(separate, [x, *ws, *bs])
    assert_same(value, want_value)
    for g, want in zip(grads, want_grads):
        assert_same(g, want)


def test_fused_linear_with_stacked_arrays_uses_them_and_checks_their_shape():
    rng = np.random.default_rng(0)
    x, w1, w2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((1, 3))
    stacked = np.concatenate([w1, w2])
    y = F.fused_linear(x, [w1, w2], stacked=(stacked, None))
    assert_same(y.data, x @ stacked.T)
    with pytest.raises(ValueError, match="do not stack the weights"):
        F.fused_linear(x, [w1, w2], stacked=(stacked[:2], None))
    with pytest.raises(ValueError, match="biases have shapes"):
        F.fused_linear(x, [w1, w2], [np.zeros(2), np.zeros(2)])


@st.composite
def packed_inputs(draw):
    B, T = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    Hkv = draw(st.integers(1, 2))
    H = Hkv * draw(st.integers(1, 2))
    D = draw(st.sampled_from([2, 4]))
    rope = draw(st.booleans())
    qkv = draw(arrays_like((B, T, (H + 2 * Hkv) * D)))
    options = dict(causal=draw(st.booleans()), window=draw(st.one_of(st.none(), st.integers(1, T + 1))),
                   alibi_slopes=alibi_slopes(H) if draw(st.booleans()) else None,
                   key_padding_mask=draw(key_padding_masks(B, T)) if draw(st.booleans()) else None)
    positions = draw(st.sampled_from([None, "per row"]))
    if positions == "per row":
        positions = np.stack([np.arange(T) + draw(st.integers(0, 3)) for _ in range(B)])
    return qkv, H, Hkv, positions if rope else None, 10000.0 if rope else None, options


def composed_attention(qkv, H, Hkv, positions, theta, options):
    """What PackedAttentionFn replaces: slices, reshapes, transposes, rope, attention, merge."""
    B, T, width = qkv.shape
    D = width // (H + 2 * Hkv)

    def heads(a, n):
        return a.reshape(B, T, n, D).transpose(0, 2, 1, 3)
    q, k, v = heads(qkv[:, :, :H * D], H), heads(qkv[:, :, H * D:(H + Hkv) * D], Hkv), heads(qkv[:, :, (H + Hkv) * D:], Hkv)
    if theta is not None:
        pos = np.arange(T) if positions is None else positions
        q, k = F.rope(q, pos, theta), F.rope(k, pos, theta)
    return F.attention(q, k, v, **options).transpose(0, 2, 1, 3).reshape(B, T, H * D)


@given(inputs=packed_inputs())
def test_packed_attention_passes_gradcheck_and_equals_the_composition(inputs):
    qkv, H, Hkv, positions, theta, options = inputs

    def packed(qkv):
        return F.packed_attention(qkv, H, Hkv, positions, theta, **options)

    gradcheck(packed, [qkv])
    value, (grad,) = grads_of(packed, [qkv])
    want_value, (want_grad,) = grads_of(lambda a: composed_attention(a, H, Hkv, positions, theta, options), [qkv])
    assert_same(value, want_value)
    assert_same(grad, want_grad)


def test_packed_attention_rejects_bad_layouts():
    with pytest.raises(ValueError, match="must hold n_heads 2 \\+ 2 n_kv_heads 1 heads"):
        F.packed_attention(np.zeros((1, 2, 10)), 2, 1)
    with pytest.raises(ValueError, match="RoPE needs an even head dim"):
        F.packed_attention(np.zeros((1, 2, 12)), 2, 1, rope_theta=10000.0)
    with pytest.raises(ValueError, match="positions must be ints of shape"):
        F.packed_attention(np.zeros((1, 2, 16)), 2, 1, positions=np.arange(3), rope_theta=10000.0)


@given(seed=st.integers(0, 2**16), N=st.integers(1, 6), C=st.integers(1, 4), V=st.integers(2, 7),
       ignored=st.booleans())
def test_linear_cross_entropy_passes_gradcheck_and_equals_linear_then_cross_entropy(seed, N, C, V, ignored):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((N, C)), rng.standard_normal((V, C))
    targets = rng.integers(0, V, N)
    if ignored:
        targets[0] = -100
    gradcheck(lambda x, w: F.linear_cross_entropy(x, w, targets), [x, w])
    value, grads = grads_of(lambda x, w: F.linear_cross_entropy(x, w, targets), [x, w])
    want_value, want_grads = grads_of(lambda x, w: F.cross_entropy(F.linear(x, w), targets), [x, w])
    assert_same(value, want_value)
    for g, want in zip(grads, want_grads):
        assert_same(g, want)


def test_linear_cross_entropy_rejects_bad_arguments():
    x, w = np.zeros((3, 2)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="their last axes must match"):
        F.linear_cross_entropy(x, np.zeros((5, 3)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        F.linear_cross_entropy(x, w, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="targets contain 5, outside"):
        F.linear_cross_entropy(x, w, np.array([0, 5, 1]))


@pytest.mark.parametrize("knobs", [dict(), dict(positions="rope", n_kv_heads=1, bias=False, window=2),
                                   dict(positions="alibi", causal=False)])
def test_attention_forward_equals_its_composition(knobs):
    rng = np.random.default_rng(0)
    attn = nn.Attention(nn.BlockConfig(d_model=8, n_heads=2, init_std=0.5, **knobs), rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 3, 8))
    params = [p for _, p in attn.named_parameters()]

    def run(method):
        for p in params:
            p.grad = None
        xt = Tensor(x.copy(), requires_grad=True)
        out = method(xt)
        out.backward(np.random.default_rng(1).standard_normal(out.shape))
        return out.data, [xt.grad] + [p.grad for p in params]

    value, grads = run(attn.forward)
    want_value, want_grads = run(attn.composed)
    assert_same(value, want_value)
    for g, want in zip(grads, want_grads):
        assert_same(g, want)


@pytest.mark.parametrize("flavour", [dict(), dict(norm="rmsnorm", activation="swiglu", positions="rope",
                                                  n_kv_head=2, bias=False, tie_embeddings=False),
                                     dict(n_experts=2, top_k=1, d_ff=8)])
def test_model_loss_equals_forwards_loss_with_the_same_gradients(flavour):
    rng = np.random.default_rng(0)
    config = ModelConfig(vocab_size=9, block_size=8, n_layer=2, n_head=4, n_kv_head=flavour.pop("n_kv_head", None),
                         n_embd=16, init_std=0.3, **flavour)
    model = DecoderLM(config, rng=rng, dtype=np.float64)
    ids, targets = rng.integers(0, 9, (2, 6)), rng.integers(0, 9, (2, 6))
    targets[0, 1] = -100

    def run(loss_of):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        return float(loss.data), {n: p.grad.copy() for n, p in model.named_parameters()}

    value, grads = run(lambda: model.loss(ids, targets))
    want_value, want_grads = run(lambda: model(ids, targets)[1])
    assert value == pytest.approx(want_value, rel=1e-12)
    for name in want_grads:
        assert_same(grads[name], want_grads[name])
