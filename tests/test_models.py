import numpy as np
import pytest

from minillm.models import DecoderLM, ModelConfig, load_preset, preset_names
from minillm.testing import gradcheck_module

TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, d_ff=12, init_std=0.4)
FLAVOURS = {
    "gpt2": dict(),
    "llama gqa": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=1, bias=False,
                      tie_embeddings=False),
    "alibi window": dict(positions="alibi", window=3),
    "sinusoidal": dict(positions="sinusoidal"),
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_whole_model_loss_passes_gradcheck(flavour):
    rng = np.random.default_rng(0)
    model = DecoderLM(ModelConfig(**TINY, **FLAVOURS[flavour]), rng=rng, dtype=np.float64)
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
    assert {"shakespeare-char", "llama-15m", "llama-110m", "gpt2-124m"} <= set(preset_names())
    for name in preset_names():
        spec = load_preset(name)
        ModelConfig(**dict(spec["model"], vocab_size=spec["model"]["vocab_size"] or 65))
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
