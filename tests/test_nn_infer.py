"""The inference path (DecoderLM.infer and the modules' infer: arrays straight to the kernels, no
tape, q/k/v and gate/up fused) computes what the autograd forward computes: for every position
kind, norm, activation, MHA/GQA/MQA, sliding windows, biases, tied and untied heads, MoE, and
quantized models; decoding with the KV cache one token at a time equals re-running the whole
sequence; and the fused weight arrays never go stale (in-place updates, load_state_dict, to())."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm import nn
from minillm.autograd import no_grad
from minillm.models import DecoderLM, ModelConfig
from minillm.nn.fused import FusedRows
from minillm.nn.quantized import quantize_model


@st.composite
def model_configs(draw):
    """Small ModelConfigs over every knob that changes what a block computes."""
    n_head = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([2, 4, 6]))
    positions = draw(st.sampled_from(["learned", "sinusoidal", "rope", "alibi"]))
    n_experts = draw(st.sampled_from([0, 0, 3]))
    n_layer = draw(st.integers(1, 2))
    return ModelConfig(
        vocab_size=draw(st.integers(3, 17)), block_size=16, n_layer=n_layer, n_head=n_head,
        n_kv_head=draw(st.sampled_from([d for d in (None, 1, 2, 4) if d is None or n_head % d == 0])),
        n_embd=n_head * head_dim, d_ff=draw(st.sampled_from([None, 8])),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])), activation=draw(st.sampled_from(["gelu", "swiglu"])),
        positions=positions, window=draw(st.sampled_from([None, 1, 3])), bias=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()), init_std=0.5, n_experts=n_experts,
        top_k=draw(st.integers(1, 2)) if n_experts else 2, moe_every=draw(st.integers(1, n_layer)) if n_experts else 1)


def forward_logits(model, ids, **kw):
    with no_grad():
        return model(ids, **kw).data


def close(got, want, dtype):
    """float64: to rounding; float32: to ~1e-6 of the logits' size."""
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


@given(config=model_configs(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16),
       T=st.integers(1, 6), batch=st.integers(1, 2))
def test_infer_equals_the_autograd_forward(config, dtype, seed, T, batch):
    rng = np.random.default_rng(seed)
    model = DecoderLM(config, rng=rng, dtype=dtype).eval()
    ids = rng.integers(0, config.vocab_size, (batch, T))
    want = forward_logits(model, ids)
    got = model.infer(ids)
    assert got.dtype == dtype and got.shape == want.shape
    close(got, want, dtype)
    close(model.infer(ids, last_only=True), want[:, -1:], dtype)


@given(config=model_configs(), seed=st.integers(0, 2**16), prompt=st.integers(1, 10))
def test_cached_decoding_equals_rerunning_the_whole_sequence(config, seed, prompt):
    rng = np.random.default_rng(seed)
    model = DecoderLM(config, rng=rng, dtype=np.float64).eval()
    ids = rng.integers(0, config.vocab_size, (2, prompt + 4))
    caches = model.new_caches(2, ids.shape[1], dtype=np.float64)
    steps = [model.infer(ids[:, :prompt], caches=caches)]
    steps += [model.infer(ids[:, t:t + 1], caches=caches) for t in range(prompt, ids.shape[1])]
    want = np.stack([forward_logits(model, ids[:, :t + 1])[:, -1] for t in range(ids.shape[1])], axis=1)
    close(np.concatenate(steps, axis=1), want, np.float64)


def test_padded_batches_and_per_row_positions_match_the_forward():
    config = ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, norm="rmsnorm",
                         activation="swiglu", positions="rope", bias=False, init_std=0.5)
    model = DecoderLM(config, rng=np.random.default_rng(0), dtype=np.float64).eval()
    ids = np.random.default_rng(1).integers(0, 11, (2, 5))
    mask = np.array([[False, False, True, True, True], [True] * 5])
    positions = np.maximum(np.arange(5)[None, :] - np.array([[2], [0]]), 0)
    want = forward_logits(model, ids, positions=positions, key_padding_mask=mask)
    close(model.infer(ids, positions, mask), want, np.float64)


@pytest.mark.parametrize("scheme", ["int8", "q8_0", "q4_0", "q4_1", "nf4"])
@pytest.mark.parametrize("flavour", [dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2,
                                          bias=False),
                                     dict(bias=True, tie_embeddings=False),
                                     dict(n_experts=2, top_k=1, activation="swiglu")])
def test_quantized_infer_equals_the_quantized_forward(scheme, flavour):
    config = ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=64, d_ff=64, **flavour)
    model = quantize_model(DecoderLM(config, rng=np.random.default_rng(0)), scheme)
    ids = np.random.default_rng(1).integers(0, 20, (2, 7))
    want = forward_logits(model, ids)
    close(model.infer(ids), want, np.float32)
    caches = model.new_caches(2)
    steps = [model.infer(ids[:, :4], caches=caches)] + [model.infer(ids[:, t:t + 1], caches=caches) for t in (4, 5, 6)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), want, rtol=1e-4, atol=1e-4)


def llama(dtype=np.float64):
    config = ModelConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, norm="rmsnorm",
                         activation="swiglu", positions="rope", bias=False, init_std=0.5)
    return DecoderLM(config, rng=np.random.default_rng(0), dtype=dtype).eval()


def test_the_fused_weights_follow_in_place_updates_and_replaced_arrays():
    model, ids = llama(), np.array([[1, 2, 3]])
    model.infer(ids)                                        # the stacks exist now
    attn, ffn = model.blocks[0].attn, model.blocks[0].ffn
    attn.wk.weight.data *= 3.0                              # in place, as an optimizer updates
    ffn.w_up.data[...] = 0.5
    close(model.infer(ids), forward_logits(model, ids), np.float64)
    other = llama()
    other.blocks[0].attn.wv.weight.data[:] = 2.0
    model.load_state_dict(other.state_dict())               # replaces every array
    close(model.infer(ids), forward_logits(other, ids), np.float64)
    model.to(np.float32)                                    # replaces them again, in another dtype
    assert model.infer(ids).dtype == np.float32
    close(model.infer(ids), forward_logits(model, ids), np.float32)


def test_fusing_keeps_names_shapes_and_the_state_dict():
    model = llama()
    before = model.state_dict()
    model.infer(np.array([[1, 2]]))
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(after[k], before[k]) and after[k].shape == before[k].shape for k in before)
    assert model.num_parameters() == llama().num_parameters()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in llama().named_parameters()]


def test_fused_rows_stacks_once_and_restacks_when_an_array_is_replaced():
    parts = [nn.Parameter(np.full((2, 3), float(i))) for i in range(3)]
    fused = FusedRows()
    stacked = fused.rows(parts, "data")
    assert stacked.shape == (6, 3) and stacked.flags.c_contiguous
    assert fused.rows(parts, "data") is stacked                       # no copy while the views are in place
    parts[1].data[0, 0] = 7.0                                         # in place: seen through the view
    assert stacked[2, 0] == 7.0
    parts[2].data = np.full((2, 3), 9.0)                              # replaced: restacked
    again = fused.rows(parts, "data")
    assert again is not stacked and again[4:].tolist() == [[9.0] * 3] * 2 and again[2, 0] == 7.0


def test_infer_rejects_bad_ids_and_positions_like_forward():
    model = llama()
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 11\)"):
        model.infer(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="ids must be \\(B, T\\)"):
        model.infer(np.array([1, 2]))
    with pytest.raises(ValueError, match="position 16 is beyond the context length 16"):
        model.infer(np.zeros((1, 17), dtype=np.int64))
