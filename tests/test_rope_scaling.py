"""RoPE scaling (functional/rope_scaling.py): each rope_type's frequencies computed by hand, pair by pair,
from its paper's formula; the tables, F.rope and the models that carry a rope_scaling; and an oracle
against transformers' ROPE_INIT_FUNCTIONS and a Llama with each scaling (skipped without them)."""
import json
import math

import numpy as np
import pytest

import minillm.functional as F
from minillm.models import DecoderLM, ModelConfig

D, THETA = 16, 10000.0


def plain(i):
    """f_i = theta^(-2i/D), the frequency of pair i."""
    return THETA ** (-2.0 * i / D)


def test_linear_divides_every_frequency_by_the_factor():
    inv_freq, attention = F.rope_frequencies(D, THETA, F.RopeScaling("linear", 4.0))
    assert attention == 1.0
    for i in range(D // 2):
        assert inv_freq[i] == pytest.approx(plain(i) / 4.0, rel=1e-12)


def test_linear_at_position_s_p_is_plain_rope_at_p():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, D))
    positions = np.arange(5)
    scaled = F.rope(x, positions * 3, THETA, F.RopeScaling("linear", 3.0)).data
    np.testing.assert_allclose(scaled, F.rope(x, positions, THETA).data, atol=1e-12)


def test_dynamic_ntk_grows_the_base_beyond_the_trained_length_only():
    s = F.RopeScaling("dynamic", 2.0, original_max_position_embeddings=64)
    np.testing.assert_array_equal(F.rope_frequencies(D, THETA, s, seq_len=64)[0], F.rope_frequencies(D, THETA)[0])
    T = 256
    base = THETA * (2.0 * T / 64 - 1.0) ** (D / (D - 2))               # theta (s T / L - (s - 1))^(D/(D-2))
    inv_freq, _ = F.rope_frequencies(D, THETA, s, seq_len=T)
    for i in range(D // 2):
        assert inv_freq[i] == pytest.approx(base ** (-2.0 * i / D), rel=1e-12)
    # the tables take the length from the largest position
    cos, _ = F.rope_tables(np.arange(T), D, THETA, np.float64, s)
    np.testing.assert_allclose(cos[T - 1, :D // 2], np.cos((T - 1) * inv_freq), atol=1e-12)


def test_yarn_ramps_between_extrapolation_and_interpolation():
    L, s = 128, 8.0
    yarn = F.RopeScaling("yarn", s, original_max_position_embeddings=L, beta_fast=32, beta_slow=1)
    inv_freq, attention = F.rope_frequencies(D, THETA, yarn)
    assert attention == pytest.approx(0.1 * math.log(s) + 1.0)
    # pair d turns L f_d / (2 pi) times over L positions: solve for the pairs turning 32 and 1 times
    lo = math.floor(D * math.log(L / (32 * 2 * math.pi)) / (2 * math.log(THETA)))
    hi = math.ceil(D * math.log(L / (1 * 2 * math.pi)) / (2 * math.log(THETA)))
    lo, hi = max(lo, 0), min(hi, D - 1)
    for i in range(D // 2):
        r = min(max((i - lo) / (hi - lo), 0.0), 1.0)                   # 0: high frequency, kept
        assert inv_freq[i] == pytest.approx(plain(i) * (1 - r) + plain(i) / s * r, rel=1e-12)
    assert inv_freq[0] == pytest.approx(plain(0)) and inv_freq[-1] == pytest.approx(plain(D // 2 - 1) / s)
    # the attention factor multiplies cos and sin
    cos, sin = F.rope_tables(np.arange(4), D, THETA, np.float64, yarn)
    np.testing.assert_allclose(cos ** 2 + sin ** 2, attention ** 2, atol=1e-12)
    custom = F.RopeScaling("yarn", s, original_max_position_embeddings=L, attention_factor=1.5)
    assert F.rope_frequencies(D, THETA, custom)[1] == 1.5


def test_llama3_keeps_high_scales_low_and_smooths_between():
    L, s, lo_f, hi_f = 64, 8.0, 1.0, 4.0
    cfg = F.RopeScaling("llama3", s, original_max_position_embeddings=L, low_freq_factor=lo_f, high_freq_factor=hi_f)
    inv_freq, attention = F.rope_frequencies(D, THETA, cfg)
    assert attention == 1.0
    kinds = set()
    for i in range(D // 2):
        wavelength = 2 * math.pi / plain(i)
        if wavelength < L / hi_f:
            want, kind = plain(i), "high"
        elif wavelength > L / lo_f:
            want, kind = plain(i) / s, "low"
        else:
            a = (L / wavelength - lo_f) / (hi_f - lo_f)
            want, kind = (1 - a) * plain(i) / s + a * plain(i), "medium"
        kinds.add(kind)
        assert inv_freq[i] == pytest.approx(want, rel=1e-12)
    assert kinds == {"high", "low", "medium"}                          # the test covers all three branches


def test_from_dict_reads_hugging_face_names_and_refuses_bad_ones():
    s = F.RopeScaling.from_dict({"type": "yarn", "factor": 4.0, "beta_fast": 16}, max_position_embeddings=512)
    assert (s.rope_type, s.factor, s.original_max_position_embeddings, s.beta_fast) == ("yarn", 4.0, 512, 16)
    s = F.RopeScaling.from_dict({"rope_type": "yarn", "original_max_position_embeddings": 128, "factor": None},
                                max_position_embeddings=512)
    assert s.factor == 4.0                                             # HF: max / original when factor is null
    assert F.RopeScaling.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown key.*'fator'"):
        F.RopeScaling.from_dict({"rope_type": "linear", "fator": 2})
    with pytest.raises(ValueError, match="rope_type must be one of"):
        F.RopeScaling.from_dict({"rope_type": "longrope", "factor": 2})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        F.RopeScaling.from_dict({"rope_type": "llama3", "factor": 8})
    with pytest.raises(ValueError, match="rope_scaling needs positions = 'rope'"):
        ModelConfig(positions="learned", rope_scaling={"rope_type": "linear", "factor": 2})


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
                                     {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8}])
def test_model_with_rope_scaling_infer_forward_and_fused_agree(scaling):
    config = ModelConfig(vocab_size=20, block_size=32, n_layer=1, n_head=2, n_embd=16, positions="rope",
                         norm="rmsnorm", activation="swiglu", bias=False, rope_scaling=scaling, init_std=0.3)
    model = DecoderLM(config, rng=np.random.default_rng(0))
    plain_model = DecoderLM(ModelConfig(**{**config.to_dict(), "rope_scaling": None}), rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 20, size=(2, 24))
    logits = model(ids).data
    np.testing.assert_allclose(model.infer(ids), logits, atol=1e-4)
    attn = model.blocks[0].attn
    x = np.random.default_rng(2).standard_normal((2, 24, 16)).astype(np.float32)
    np.testing.assert_allclose(attn(x).data, attn.composed(x).data, atol=1e-5)
    assert not np.allclose(logits, plain_model(ids).data, atol=1e-4)   # the scaling changes the model
    json.dumps(config.to_dict())                                       # and round-trips through JSON
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _hf_config(scaling, max_positions=256):
    transformers = pytest.importorskip("transformers")
    return transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=max_positions,
                                    rope_theta=THETA, rope_scaling=dict(scaling))


HF_SCALINGS = [{"rope_type": "linear", "factor": 4.0},
               {"rope_type": "dynamic", "factor": 3.0},
               {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 24,
                "beta_slow": 2},
               {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "attention_factor": 1.3},
               {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}]


@pytest.mark.parametrize("scaling", HF_SCALINGS)
def test_frequencies_match_transformers(scaling):
    pytest.importorskip("torch")
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    config = _hf_config(scaling)
    ours = F.RopeScaling.from_dict(scaling, max_position_embeddings=256)
    for seq_len in (None, 1000):
        theirs, attention = rope_utils.ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu", seq_len=seq_len)
        inv_freq, factor = F.rope_frequencies(16, THETA, ours, seq_len=seq_len)
        np.testing.assert_allclose(inv_freq, theirs.double().numpy(), rtol=1e-6)
        assert factor == pytest.approx(attention, rel=1e-6)


@pytest.mark.parametrize("scaling", [HF_SCALINGS[0], HF_SCALINGS[2], HF_SCALINGS[4]])
def test_transformers_llama_with_rope_scaling_loads_with_equal_logits(tmp_path, scaling):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minillm.pretrained import load_pretrained
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                      rope_theta=THETA, rope_scaling=dict(scaling))
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(str(tmp_path))
    assert model.config.rope_scaling["rope_type"] == scaling["rope_type"]
    ids = np.random.default_rng(0).integers(0, 50, size=(1, 160))
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model(ids).data, want, atol=2e-4)
    # and it writes them back: export_hf, then transformers reads the same scaling
    from minillm.io.hf import export_hf
    export_hf(model, None, str(tmp_path / "out"))
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.tensor(ids)).logits.numpy(), want, atol=2e-4)


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                      "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25}])
def test_gguf_export_keeps_the_rope_scaling(tmp_path, scaling):
    pytest.importorskip("gguf")
    from minillm.io.gguf_write import export_gguf
    from minillm.pretrained import load_pretrained
    from minillm.tokenizers import BPETokenizer
    config = ModelConfig(vocab_size=300, block_size=64, n_layer=1, n_head=2, n_embd=32, norm="rmsnorm",
                         activation="swiglu", positions="rope", bias=False, rope_scaling=scaling)
    model = DecoderLM(config, rng=np.random.default_rng(0)).eval()
    path = str(tmp_path / "m.gguf")
    export_gguf(model, BPETokenizer.train("the quick brown fox jumps over the lazy dog " * 20, vocab_size=300), path)
    again, _ = load_pretrained(path)
    got = F.RopeScaling.from_dict(again.config.rope_scaling, 64).to_dict()
    want = config.rope_scaling_config().to_dict()
    assert got.keys() == want.keys() and all(got[k] == (want[k] if isinstance(want[k], (str, bool)) else pytest.approx(want[k], rel=1e-6)) for k in want)
    ids = np.random.default_rng(1).integers(0, 300, size=(1, 40))
    np.testing.assert_allclose(again(ids).data, model(ids).data, atol=1e-5)


def test_freq_factors_divide_each_pair_and_llama3s_factors_are_what_llama_cpp_writes():
    D, L, s = 16, 64, 8.0
    llama3 = F.RopeScaling("llama3", s, original_max_position_embeddings=L, low_freq_factor=1.0, high_freq_factor=4.0)
    factors = F.rope_scaling.llama3_freq_factors(D, THETA, llama3)
    expected = []                              # llama.cpp's HF-to-GGUF converter, written out pair by pair
    for i in range(D // 2):
        wavelength = 2 * math.pi / THETA ** (-2 * i / D)
        if wavelength < L / 4.0:
            expected.append(1.0)
        elif wavelength > L / 1.0:
            expected.append(s)
        else:
            smooth = (L / wavelength - 1.0) / (4.0 - 1.0)
            expected.append(1 / ((1 - smooth) / s + smooth))
    np.testing.assert_allclose(factors, expected, rtol=1e-12)
    assert factors[0] == 1.0 and factors[-1] == s      # the fastest pair kept, the slowest interpolated
    custom = F.RopeScaling("freq_factors", freq_factors=tuple(float(v) for v in factors))
    np.testing.assert_allclose(F.rope_frequencies(D, THETA, custom)[0], F.rope_frequencies(D, THETA, llama3)[0],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="freq_factors has 8 values, but a head of 32 dims has 16"):
        F.rope_frequencies(32, THETA, custom)
    with pytest.raises(ValueError, match="freq_factors needs a non-empty tuple"):
        F.RopeScaling("freq_factors", freq_factors=(1.0, -2.0))


@pytest.mark.parametrize("scaling", [{"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0}])
def test_gguf_carries_llama3_scaling_in_a_rope_freqs_tensor(tmp_path, scaling):
    pytest.importorskip("gguf")
    from gguf import GGUFReader

    from minillm.io.gguf_write import export_gguf
    from minillm.pretrained import load_pretrained
    from minillm.tokenizers import BPETokenizer
    config = ModelConfig(vocab_size=300, block_size=64, n_layer=1, n_head=2, n_embd=32, norm="rmsnorm",
                         activation="swiglu", positions="rope", bias=False, rope_scaling=scaling,
                         init_std=0.3)
    model = DecoderLM(config, rng=np.random.default_rng(0)).eval()
    path = str(tmp_path / "m.gguf")
    tokenizer = BPETokenizer.train("the quick brown fox jumps over the lazy dog " * 20, vocab_size=300)
    export_gguf(model, tokenizer, path)
    tensor = {t.name: t for t in GGUFReader(path).tensors}["rope_freqs.weight"]
    want = F.rope_scaling.llama3_freq_factors(16, config.rope_theta, config.rope_scaling_config())
    np.testing.assert_allclose(np.asarray(tensor.data, dtype=np.float64), want, rtol=1e-7)
    again, _ = load_pretrained(path)
    assert again.config.rope_scaling["rope_type"] == "freq_factors"
    ids = np.random.default_rng(1).integers(0, 300, size=(1, 60))          # past the original 16 positions
    np.testing.assert_allclose(again(ids).data, model(ids).data, atol=1e-5)
    plain = DecoderLM(ModelConfig(**{**config.to_dict(), "rope_scaling": None}), rng=np.random.default_rng(0)).eval()
    assert np.abs(plain(ids).data - model(ids).data).max() > 1e-2       # the scaling matters at these positions
    export_gguf(again, tokenizer, str(tmp_path / "again.gguf"))            # and round-trips as freq_factors
    third, _ = load_pretrained(str(tmp_path / "again.gguf"))
    np.testing.assert_array_equal(third(ids).data, again(ids).data)
