"""Hugging Face directories, against transformers itself (oracle tests, skipped without torch and
transformers): random Llama and GPT-2 models saved by transformers load in minillm with the same
logits, and minillm models written by export_hf load in transformers with the same logits."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minillm.io import FormatError  # noqa: E402
from minillm.pretrained import load_pretrained  # noqa: E402
from minillm.io.hf import export_hf  # noqa: E402
from minillm.models import DecoderLM, ModelConfig  # noqa: E402
from minillm.tokenizers import BPETokenizer  # noqa: E402

IDS = np.random.default_rng(0).integers(0, 96, size=(2, 13))


def hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def random_llama(tie, dtype=torch.float32):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def random_gpt2(tie):
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=96, n_embd=48, n_layer=2, n_head=4, n_positions=32,
                                     tie_word_embeddings=tie, layer_norm_epsilon=1e-5)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_llama_loads_with_equal_logits(tmp_path, tie):
    hf = random_llama(tie)
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(str(tmp_path))
    assert model.config.tie_embeddings == tie and model.config.n_kv_head == 2 and model.config.rope_theta == 500.0
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf), atol=1e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_gpt2_loads_with_equal_logits(tmp_path, tie):
    hf = random_gpt2(tie)
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(str(tmp_path))
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf), atol=1e-4)


def test_sharded_bfloat16_checkpoint_loads(tmp_path):
    hf = random_llama(False, torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = load_pretrained(str(tmp_path))
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf.float()), atol=1e-4)


def minillm_model(flavour):
    common = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=64, d_ff=96)
    if flavour == "llama":
        config = ModelConfig(**common, n_kv_head=2, norm="rmsnorm", activation="swiglu", positions="rope",
                             bias=False, tie_embeddings=True, rope_theta=2000.0, norm_eps=1e-6)
    else:
        config = ModelConfig(**common, tie_embeddings=False)
    return DecoderLM(config, rng=np.random.default_rng(3)).eval()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_exported_directory_loads_in_transformers_with_equal_logits(tmp_path, flavour):
    model = minillm_model(flavour)
    export_hf(model, None, str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(hf_logits(hf), model(IDS).data, atol=1e-4)
    again, _ = load_pretrained(str(tmp_path))
    assert np.array_equal(again(IDS).data, model(IDS).data)


def test_exported_tokenizer_loads_in_transformers_with_the_same_ids(tmp_path):
    corpus = "the quick brown fox jumps over the lazy dog 1234 times; ünïcödé 日本\n" * 20
    tokenizer = BPETokenizer.train(corpus, vocab_size=300)
    model = minillm_model("gpt2")
    model.config.vocab_size = 300
    model = DecoderLM(model.config, rng=np.random.default_rng(0))
    export_hf(model, tokenizer, str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ("the lazy dog 42", "ünïcödé  日本 foxes<|endoftext|>", corpus[:200]):
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text, allowed_special="all")
    _, loaded = load_pretrained(str(tmp_path))
    assert loaded.encode(corpus) == tokenizer.encode(corpus)


def test_bad_directories_are_one_clear_error(tmp_path):
    hf = random_llama(False)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, architectures=["MistralForCausalLM"])))
    with pytest.raises(FormatError, match="MistralForCausalLM.*not supported"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(FormatError, match="truncated"):
        load_pretrained(str(tmp_path))
