"""LoRA on minillm's models (Llama and GPT-2 layouts, float and quantized bases): an adapted model starts
equal to its base; the whole model's loss passes gradcheck in the adapters; only the adapters get
gradients and optimizer state; merge and unmerge are exact to float rounding; the scale is alpha / r
(alpha / sqrt(r) with rsLoRA); targets resolve by peft's and minillm's names; bad configs get clear errors."""
import numpy as np
import pytest

from minillm.models import DecoderLM, ModelConfig
from minillm.nn.lora import LoraConfig, adapter_state_dict, apply_lora, merge_lora, trainable_parameters
from minillm.nn.quantized import quantize_model
from minillm.optim import AdamW, param_groups
from minillm.testing import check_gradients

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=12, init_std=0.4)
LLAMA = dict(TINY, norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=1, bias=False)
LAYOUTS = {"llama": (LLAMA, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
           "gpt2": (TINY, ["c_attn", "c_proj", "c_fc"])}


def model_and_batch(layout, dtype=np.float32, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    model = DecoderLM(ModelConfig(**{**LAYOUTS[layout][0], **overrides}), rng=rng, dtype=dtype)
    ids, targets = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    return model, ids, targets


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_adapted_model_starts_equal_to_its_base(layout):
    model, ids, _ = model_and_batch(layout)
    before = model(ids).data
    apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=LAYOUTS[layout][1]), rng=np.random.default_rng(1))
    np.testing.assert_array_equal(model(ids).data.shape, before.shape)
    np.testing.assert_allclose(model(ids).data, before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_models_loss_passes_gradcheck_in_the_adapters(layout):
    model, ids, targets = model_and_batch(layout, np.float64)
    apply_lora(model, LoraConfig(r=2, lora_alpha=3, target_modules=LAYOUTS[layout][1], init_lora_weights=False),
               rng=np.random.default_rng(1))
    adapters = trainable_parameters(model)
    assert adapters and all(".lora_" in n for n, _ in adapters)
    check_gradients(lambda: model(ids, targets)[1], adapters)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_adapters_get_gradients_and_optimizer_state(layout):
    model, ids, targets = model_and_batch(layout)
    apply_lora(model, LoraConfig(r=2, target_modules=LAYOUTS[layout][1]), rng=np.random.default_rng(1))
    base = {n: p.data.copy() for n, p in model.named_parameters() if ".lora_" not in n}
    optimizer = AdamW(param_groups(model, 0.1), lr=1e-2)
    for _ in range(2):
        model(ids, targets)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            assert p.grad is None and not p.requires_grad, name
            np.testing.assert_array_equal(p.data, base[name])
    slots = {k.rsplit(".", 1)[0] for k in optimizer.state}
    assert slots == set(adapter_state_dict(model))
    assert {n for n, _ in optimizer.named_parameters()} == set(adapter_state_dict(model))   # frozen: not even listed
    assert any(np.any(a != 0) for n, a in adapter_state_dict(model).items() if "lora_B" in n)   # B has moved


@pytest.mark.parametrize("layout", LAYOUTS)
def test_merge_and_unmerge_are_exact_to_rounding(layout):
    model, ids, _ = model_and_batch(layout)
    apply_lora(model, LoraConfig(r=3, lora_alpha=5, target_modules=["all-linear"], init_lora_weights=False),
               rng=np.random.default_rng(2))
    weights = {n: p.data.copy() for n, p in model.named_parameters()}
    adapted = model(ids).data
    layers = [m for _, m in model.named_modules() if hasattr(m, "merge") and hasattr(m, "unmerge")]
    for layer in layers:
        layer.merge()
    np.testing.assert_allclose(model(ids).data, adapted, rtol=1e-5, atol=1e-5)
    merged_weights = {n: p.data.copy() for n, p in model.named_parameters()}
    for layer in layers:
        layer.unmerge()
    eps = np.finfo(np.float32).eps
    for n, p in model.named_parameters():      # W + d - d: one rounding of W + d, one of the difference
        assert np.all(np.abs(p.data - weights[n]) <= eps * (np.abs(merged_weights[n]) + np.abs(weights[n]))), n
    assert any(np.any(merged_weights[n] != weights[n]) for n in weights)
    np.testing.assert_allclose(model(ids).data, adapted, rtol=1e-5, atol=1e-5)
    merged = merge_lora(model)                       # plain layers back, the update folded in
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(merged(ids).data, adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1", "nf4"])
def test_qlora_trains_adapters_over_a_frozen_quantized_base(scheme):
    model, ids, targets = model_and_batch("llama", n_embd=64, d_ff=64, n_head=2)
    quantize_model(model, scheme)
    buffers = {n: a.copy() for n, _, _, a in model.named_buffers()}
    apply_lora(model, LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
               rng=np.random.default_rng(1))
    model.train()
    optimizer = AdamW(param_groups(model, 0.0), lr=3e-2)
    losses = []
    for _ in range(8):
        loss = model(ids, targets)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.data))
    assert losses[-1] < losses[0] - 0.05
    for n, _, _, a in model.named_buffers():
        np.testing.assert_array_equal(a, buffers[n])


def test_scale_is_alpha_over_r_and_rslora_over_sqrt_r():
    assert LoraConfig(r=4, lora_alpha=8).scale == 2.0
    assert LoraConfig(r=4, alpha=8, use_rslora=True).scale == 4.0
    assert LoraConfig(r=4).scale == 1.0


def test_targets_resolve_by_peft_and_minillm_names():
    model, _, _ = model_and_batch("llama")
    apply_lora(model, LoraConfig(r=2, target_modules="wq,down_proj"))
    names = set(adapter_state_dict(model))
    assert names == {f"blocks.{i}.{where}.lora_{m}" for i in range(2) for where in ("attn.wq.adapter", "ffn.down_adapter")
                     for m in "AB"}


def test_bad_configs_get_clear_errors():
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        LoraConfig(dropout=1.5)
    with pytest.raises(ValueError, match="target module 'qproj'"):
        LoraConfig(target_modules=["qproj"])
    with pytest.raises(ValueError, match="init_lora_weights"):
        LoraConfig(init="pissa")
    model, _, _ = model_and_batch("gpt2")
    with pytest.raises(ValueError, match="match no layer"):
        apply_lora(model, LoraConfig(target_modules=["gate_proj"]))
    apply_lora(model, LoraConfig())
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        apply_lora(model, LoraConfig())
