"""The encoder-family modules, gradchecked whole in float64 on both backends: multi-head attention
as self- and cross-attention (T != S, padding on the left and right of the source, an additive
bias), the feed-forward variants, T5's relative position bias, and the BERT / T5 blocks."""
import numpy as np
import pytest

from minillm import nn
from minillm.autograd import no_grad
from minillm.testing import gradcheck_module

SOURCE_MASK = np.array([[True, True, True, False, False], [False, False, True, True, True]])   # right, left padding


def block_config(**knobs):
    base = dict(d_model=6, n_heads=2, d_ff=8, init_std=0.4)
    return nn.EncoderBlockConfig(**(base | knobs))


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("head_dim", [None, 2])
def test_cross_attention_gradcheck_with_source_padding_and_a_bias(scaled, head_dim):
    rng = np.random.default_rng(0)
    attn = nn.MultiHeadAttention(6, 2, head_dim=head_dim, bias=scaled, scaled=scaled, init_std=0.4, rng=rng)
    x, memory = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 5, 6))
    bias = rng.standard_normal((2, 3, 5))
    gradcheck_module(attn, [x, memory, bias],
                     forward=lambda m, x, mem, b: m(x, source=mem, bias=b, key_padding_mask=SOURCE_MASK))


def test_cross_attention_with_projected_kv_equals_attention_to_the_source():
    rng = np.random.default_rng(1)
    attn = nn.MultiHeadAttention(6, 3, bias=True, rng=rng, init_std=0.3)
    x, memory = rng.standard_normal((2, 4, 6)).astype(np.float32), rng.standard_normal((2, 5, 6)).astype(np.float32)
    with no_grad():
        direct = attn(x, source=memory, key_padding_mask=SOURCE_MASK).data
        cached = attn(x, kv=attn.project_kv(memory), key_padding_mask=SOURCE_MASK).data
    np.testing.assert_array_equal(direct, cached)


def test_causal_self_attention_with_a_cache_equals_the_full_pass():
    rng = np.random.default_rng(2)
    attn = nn.MultiHeadAttention(6, 2, scaled=False, bias=False, causal=True, rng=rng, init_std=0.3)
    x = rng.standard_normal((1, 5, 6)).astype(np.float32)
    positions = nn.RelativePositionBias(2, 8, 16, bidirectional=False, rng=rng, init_std=0.5)
    with no_grad():
        full = attn(x, bias=positions(5, 5)).data
        cache = nn.KVCache(1, 2, 5, 3)
        steps = [attn(x[:, t:t + 1], bias=positions(1, t + 1, offset=t), cache=cache).data for t in range(5)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation,gated", [("gelu", False), ("gelu_tanh", True), ("relu", False), ("silu", True)])
def test_feedforward_variants_gradcheck(activation, gated):
    rng = np.random.default_rng(3)
    ffn = nn.FeedForward(4, 6, activation, gated=gated, bias=not gated, init_std=0.5, rng=rng)
    gradcheck_module(ffn, [rng.standard_normal((2, 3, 4))])


def test_feedforward_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.FeedForward(4, 6, "tanh")


def test_relative_position_bias_module_gradcheck():
    rng = np.random.default_rng(4)
    rpb = nn.RelativePositionBias(3, num_buckets=6, max_distance=10, rng=rng)
    gradcheck_module(rpb, [], forward=lambda m: m(4, 6, offset=2))


@pytest.mark.parametrize("knobs", [dict(norm="layernorm", norm_position="post", activation="gelu"),
                                   dict(norm="rmsnorm", norm_position="pre", activation="relu", bias=False,
                                        scaled=False),
                                   dict(norm="rmsnorm", norm_position="pre", activation="gelu_tanh", gated=True,
                                        bias=False, scaled=False, head_dim=2)])
def test_encoder_block_gradcheck(knobs):
    rng = np.random.default_rng(5)
    block = nn.EncoderBlock(block_config(**knobs), rng=rng)
    x = rng.standard_normal((2, 5, 6))
    bias = rng.standard_normal((2, 5, 5)) if not knobs.get("scaled", True) else None
    gradcheck_module(block, [x], forward=lambda m, x: m(x, key_padding_mask=SOURCE_MASK, bias=bias))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_decoder_block_gradcheck_through_self_and_cross_attention(norm_position):
    rng = np.random.default_rng(6)
    block = nn.DecoderBlock(block_config(norm="rmsnorm", norm_position=norm_position, activation="relu", bias=False,
                                         scaled=False), rng=rng)
    x, memory = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 5, 6))
    bias = rng.standard_normal((2, 3, 3))
    gradcheck_module(block, [x, memory], forward=lambda m, x, mem: m(x, memory=mem, memory_mask=SOURCE_MASK, bias=bias))


def test_padding_in_the_source_changes_nothing_for_the_real_tokens():
    rng = np.random.default_rng(7)
    block = nn.EncoderBlock(block_config(), rng=rng)
    x = rng.standard_normal((1, 3, 6)).astype(np.float32)
    padded = np.concatenate([x, rng.standard_normal((1, 2, 6)).astype(np.float32)], axis=1)
    with no_grad():
        alone = block(x).data
        with_pad = block(padded, key_padding_mask=np.array([[True] * 3 + [False] * 2])).data
    np.testing.assert_allclose(with_pad[:, :3], alone, rtol=1e-5, atol=1e-6)


def test_encoder_block_config_names_bad_knobs():
    with pytest.raises(ValueError, match="norm_position must be 'pre' or 'post'"):
        block_config(norm_position="middle")
    with pytest.raises(ValueError, match="activation must be one of"):
        block_config(activation="swiglu")
    with pytest.raises(TypeError, match="EncoderBlockConfig"):
        nn.EncoderBlock(nn.BlockConfig(d_model=6, n_heads=2))
