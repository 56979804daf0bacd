import numpy as np
import pytest

from minillm import nn
from minillm.generate import generate
from minillm.models import DecoderLM, ModelConfig, load_preset, model_config_from_dict, preset_names
from minillm.testing import gradcheck_module

TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, d_ff=12, init_std=0.4)
FLAVOURS = {
    "gpt2": dict(),
    "llama gqa": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=1, bias=False,
                      tie_embeddings=False),
    "alibi window": dict(positions="alibi", window=3),
    "sinusoidal": dict(positions="sinusoidal"),
    # capacity 0.5 drops tokens; the loss includes both router losses (training mode)
    "moe gelu top-2": dict(n_experts=3, top_k=2, d_ff=4, capacity_factor=0.5, aux_loss_coef=0.5, z_loss_coef=0.1),
    "moe swiglu top-1 every 2nd": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                                       n_experts=3, top_k=1, d_ff=4, moe_every=2),
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_whole_model_loss_passes_gradcheck(flavour):
    rng = np.random.default_rng(0)
    model = DecoderLM(ModelConfig(**{**TINY, **FLAVOURS[flavour]}), rng=rng, dtype=np.float64)
    ids = rng.integers(0, 7, size=(2, 5))
    targets = rng.integers(0, 7, size=(2, 5))
    targets[1, 2] = -100
    gradcheck_module(model, [ids, targets], forward=lambda m, x, y: m(x, y)[1])


def test_num_parameters_is_exact():
    # GPT-2 small: the well-known 124,439,808 (tied head, learned positions, biases everywhere)
    C, L, V, T = 768, 12, 50257, 1024
    per_block = (4 * C * C + 4 * C) + (2 * 4 * C * C + 4 * C + C) + 2 * 2 * C
    assert V * C + T * C + L * per_block + 2 * C == 124_439_808
    # llama2.c stories15M: 15,191,712 (tied head, RoPE, RMSNorm, SwiGLU, no biases)
    spec = load_preset("llama-15m")["model"]
    model = DecoderLM(ModelConfig(**spec))
    C, L, V, F = 288, 6, 32000, 768
    assert model.num_parameters() == V * C + L * (4 * C * C + 3 * C * F + 2 * C) + C == 15_191_712
    assert model.num_parameters(exclude_embeddings=True) == 15_191_712 - V * C
    # shakespeare-char with its 65-character vocabulary
    spec = dict(load_preset("shakespeare-char")["model"], vocab_size=65)
    model = DecoderLM(ModelConfig(**spec))
    C, L = 128, 4
    assert model.num_parameters() == 65 * C + 64 * C + L * (4 * C * C + 4 * C + 8 * C * C + 5 * C + 4 * C) + 2 * C


def test_presets_are_valid_configs():
    assert {"shakespeare-char", "llama-15m", "llama-110m", "gpt2-124m", "shakespeare-moe",
            "shakespeare-moe-dense"} <= set(preset_names())
    for name in preset_names():
        spec = load_preset(name)
        model_config_from_dict(dict(spec["model"], vocab_size=spec["model"]["vocab_size"] or 65))
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("gpt5")


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="n_embd 10 must be a multiple of n_head 4"):
        ModelConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="positions must be one of"):
        ModelConfig(positions="relative")
    with pytest.raises(ValueError, match=r"unknown keys \['n_layers'\]"):
        ModelConfig.from_dict({"n_layers": 3})
    model = DecoderLM(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="position 6 is beyond the context length 6"):
        model(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="ids contains 9"):
        model(np.full((1, 3), 9))


MOE = dict(TINY, n_experts=4, top_k=2, capacity_factor=1.0)


def test_moe_blocks_and_parameter_count_follow_the_config():
    # block i is MoE when (i + 1) % moe_every == 0; an MoE FFN has E * (dense FFN) + E * n_embd parameters
    C, F, E, L = 8, 12, 4, 4
    dense = DecoderLM(ModelConfig(**dict(TINY, n_layer=L)))
    moe = DecoderLM(ModelConfig(**dict(TINY, n_layer=L, n_experts=E, moe_every=2)))
    assert [isinstance(b.ffn, nn.MoE) for b in moe.blocks] == [False, True, False, True]
    ffn = 2 * C * F + F + C
    assert moe.num_parameters() - dense.num_parameters() == 2 * ((E - 1) * ffn + E * C)
    assert moe.moe_stats() is None and dense.moe_stats() is None


def test_moe_loss_adds_the_router_losses_only_while_training():
    rng = np.random.default_rng(0)
    model = DecoderLM(ModelConfig(**MOE, aux_loss_coef=0.1, z_loss_coef=0.01), rng=rng)
    ids, targets = rng.integers(0, 7, size=(2, 6)), rng.integers(0, 7, size=(2, 6))
    _, loss = model(ids, targets)
    stats = model.moe_stats()
    assert float(loss.data) == pytest.approx(stats["ce"] + 0.1 * stats["aux_loss"] + 0.01 * stats["z_loss"], rel=1e-6)
    assert len(stats["load"]) == 2 and all(abs(sum(load) - 1) < 1e-6 for load in stats["load"])
    model.eval()
    logits, loss = model(ids, targets)
    assert float(loss.data) == pytest.approx(model.moe_stats()["ce"])
    assert model.moe_stats()["dropped"] == [0.0, 0.0]


def test_moe_generation_with_the_kv_cache_equals_without():
    rng = np.random.default_rng(1)
    model = DecoderLM(ModelConfig(**dict(MOE, block_size=16)), rng=rng)
    prompts = [[1, 2, 3], [4, 5]]
    cached = generate(model, prompts, 8, temperature=0)
    assert cached == generate(model, prompts, 8, temperature=0, use_cache=False)


def test_configs_without_moe_keys_still_load_and_moe_errors_are_clear():
    old = {k: v for k, v in ModelConfig(**TINY).to_dict().items()
           if k not in ("n_experts", "top_k", "capacity_factor", "aux_loss_coef", "z_loss_coef", "moe_every",
                        "renormalize_gates")}
    assert ModelConfig.from_dict(old).n_experts == 0
    with pytest.raises(ValueError, match=r"top_k must be an int in \[1, n_experts=2\]"):
        ModelConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor must be > 0, or null"):
        ModelConfig(n_experts=2, capacity_factor=0.0)
    with pytest.raises(ValueError, match="aux_loss_coef must be a number >= 0"):
        ModelConfig(n_experts=2, aux_loss_coef=-1)
    with pytest.raises(ValueError, match="moe_every must be a positive int"):
        ModelConfig(n_experts=2, moe_every=0)
    with pytest.raises(ValueError, match="n_experts must be an int >= 0"):
        ModelConfig(n_experts=-1)
    assert ModelConfig(n_experts=2, top_k=1, capacity_factor=None).capacity_factor is None


def test_block_configs_follow_the_model_config():
    config = ModelConfig(**dict(TINY, positions="rope", n_kv_head=1, d_ff=24, n_layer=4, n_experts=2, moe_every=2))
    blocks = [config.block_config(i) for i in range(config.n_layer)]
    assert [b.n_experts for b in blocks] == [0, 2, 0, 2]
    assert all((b.d_model, b.n_heads, b.n_kv_heads, b.hidden_dim, b.positions) ==
               (config.n_embd, config.n_head, 1, 24, "rope") for b in blocks)
    assert ModelConfig(**dict(TINY, positions="learned")).block_config(0).positions is None   # added by the model
    model = DecoderLM(config)
    assert [b.config for b in model.blocks] == blocks
    assert [type(b.ffn).__name__ for b in model.blocks] == ["MLP", "MoE", "MLP", "MoE"]


def test_moe_model_quantizes_its_experts_in_place_and_keeps_the_router():
    from minillm.nn import quantize_model
    rng = np.random.default_rng(2)
    config = ModelConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=32, d_ff=32, activation="swiglu",
                         bias=False, n_experts=4, top_k=2)
    model = DecoderLM(config, rng=rng)
    ids = rng.integers(0, 7, size=(2, 8))
    model.eval()
    before = model(ids).data
    quantize_model(model, "q8_0")
    moe = model.moe_layers()[0]
    assert type(moe.router) is nn.Linear and not any(isinstance(e, nn.SwiGLU) for e in moe.experts)
    np.testing.assert_allclose(model(ids).data, before, atol=0.05)
    assert generate(model, [[1, 2]], 5, temperature=0) == generate(model, [[1, 2]], 5, temperature=0, use_cache=False)
