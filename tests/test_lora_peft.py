"""LoRA adapters against peft itself (oracle tests, skipped without torch, transformers and peft): an
adapter written by minillm loads in peft onto the same base in transformers with the same
logits, and an adapter written by peft loads in minillm with the same logits, for the Llama and GPT-2
layouts; files that do not fit the base get a clear error."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from minillm.io import FormatError  # noqa: E402
from minillm.lora import LoraConfig, apply_lora, load_adapter, save_adapter  # noqa: E402
from minillm.pretrained import load_pretrained  # noqa: E402

IDS = np.random.default_rng(0).integers(0, 96, size=(2, 11))
BASES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=32)),
}
TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "gpt2": ["c_attn", "c_proj", "c_fc"]}


def base_dir(tmp_path, layout):
    torch.manual_seed(0)
    hf = BASES[layout]().eval()
    hf.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float().numpy()


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("layout", BASES)
def test_peft_loads_our_adapter_with_equal_logits(tmp_path, layout, rslora):
    base = base_dir(tmp_path, layout)
    model, _ = load_pretrained(base)
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[layout], use_rslora=rslora,
                                 init_lora_weights=False), rng=np.random.default_rng(3))
    ours = model(IDS).data
    save_adapter(model, tmp_path / "adapter", base=base)
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    theirs = hf_logits(peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval())
    plain = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(base).eval())
    assert np.abs(theirs - plain).max() > 1e-2            # the adapter changes the logits...
    np.testing.assert_allclose(ours, theirs, atol=1e-4)   # ...the same way in both


@pytest.mark.parametrize("layout", BASES)
def test_we_load_a_peft_adapter_with_equal_logits(tmp_path, layout):
    base = base_dir(tmp_path, layout)
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(5)
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS[layout], init_lora_weights=False,
                             fan_in_fan_out=layout == "gpt2", task_type="CAUSAL_LM")
    tuned = peft.get_peft_model(hf, config).eval()
    tuned.save_pretrained(tmp_path / "adapter")
    model, _ = load_pretrained(base)
    load_adapter(model, str(tmp_path / "adapter"))
    np.testing.assert_allclose(model(IDS).data, hf_logits(tuned), atol=1e-4)


def test_an_adapter_for_another_base_gets_a_clear_error(tmp_path):
    base = base_dir(tmp_path, "llama")
    model, _ = load_pretrained(base)
    apply_lora(model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps(dict(fields, r=3)))
    fresh, _ = load_pretrained(base)
    with pytest.raises(FormatError, match="needs"):
        load_adapter(fresh, str(tmp_path / "adapter"))
    assert getattr(fresh, "lora_config", None) is None           # nothing changed
    with pytest.raises(FormatError, match="is missing"):
        load_adapter(fresh, str(tmp_path))
