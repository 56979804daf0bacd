"""Quantized models: quantize_model keeps the logits close to the float model's in every flavour,
a quantized checkpoint loads back to the same outputs, generation with the KV cache equals
generation without it (all on both kernel backends), the straight-through backward is the dequantized linear's, and the CLI
quantizes, evaluates and generates, with clear errors for bad input."""
import json
import os

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm import functional as F
from minillm.autograd import Tensor, no_grad
from minillm.cli import main
from minillm.generate import generate
from minillm.kernels import reference
from minillm.models import DecoderLM, ModelConfig
from minillm.nn.quantized import QuantizedEmbedding, QuantizedLinear, QuantizedSwiGLU, model_nbytes, quantize_model
from minillm.quantize import load_quantized
from minillm.tokenizers import CharTokenizer

from checkpoint_helpers import committed, read, rewrite

SCHEMES = ["int8", "q8_0", "q4_0", "q4_1"]
FLAVOURS = {
    "gpt2": dict(),
    "llama": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2, bias=False,
                  tie_embeddings=False),
}
# RMS error of the logits relative to their RMS, against the float model (int8 steps are 1/254 of
# a row's range, int4 steps 1/14; a random model with init_std 0.1 amplifies them) and against the
# float model holding the dequantized weights (only the activations' int8 rounding is left)
TOLERANCE = {"int8": 0.05, "q8_0": 0.05, "q4_0": 0.6, "q4_1": 0.5}
TOLERANCE_DEQUANTIZED = 0.03
CHARS = "".join(chr(32 + i) for i in range(64))


def tiny_model(flavour, seed=0):
    config = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, init_std=0.1,
                         **FLAVOURS[flavour])
    return DecoderLM(config, rng=np.random.default_rng(seed))


def logits(model, ids):
    with no_grad():
        return model(ids).data


IDS = np.random.default_rng(1).integers(0, 64, (2, 24))


def relative_rms(got, want):
    return np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2))


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_logits_stay_close_to_the_float_model(backend, flavour, scheme):
    model = tiny_model(flavour)
    want = logits(model, IDS)
    dequantized = tiny_model(flavour)
    for name, p in dequantized.named_parameters():
        if p.ndim == 2 and not name.startswith("wpe"):           # what quantize_model quantizes
            p.data = reference.dequantize_weights(scheme, **reference.quantize_weights(p.data, scheme))
    quantize_model(model, scheme)
    got = logits(model, IDS)
    assert relative_rms(got, want) <= TOLERANCE[scheme]
    assert relative_rms(got, logits(dequantized, IDS)) <= TOLERANCE_DEQUANTIZED
    kinds = {type(m) for _, m in model.named_modules()}
    assert QuantizedEmbedding in kinds and QuantizedLinear in kinds
    assert (QuantizedSwiGLU in kinds) == (flavour == "llama")
    assert not any(name.endswith(("wq.weight", "fc.weight", "w_gate")) for name, _ in model.named_parameters())


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_checkpoint_loads_back_to_the_same_outputs(tmp_path, flavour, scheme):
    model = quantize_model(tiny_model(flavour), scheme)
    ckpt.save_checkpoint(str(tmp_path), model, CharTokenizer(CHARS), state={"step": 3})
    loaded, _ = load_quantized(str(tmp_path))
    assert loaded.quantization == scheme
    np.testing.assert_array_equal(logits(loaded, IDS), logits(model, IDS))
    assert model_nbytes(loaded) == model_nbytes(model)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1"])
def test_quantized_generation_with_the_cache_equals_without(backend, scheme):
    model = quantize_model(tiny_model("llama"), scheme)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    cached = generate(model, prompts, 8, temperature=0.9, top_k=10, seed=5)
    uncached = generate(model, prompts, 8, temperature=0.9, top_k=10, seed=5, use_cache=False)
    assert cached == uncached and all(len(row) == 8 for row in cached)


def test_quantized_weights_are_smaller_by_the_schemes_ratio():
    sizes = {}
    for scheme in SCHEMES:
        model = quantize_model(tiny_model("llama"), scheme)
        sizes[scheme] = sum(a.nbytes for *_, a in model.named_buffers())
    float_bytes = 4 * sum(p.size for p in tiny_model("llama").parameters() if p.ndim == 2)
    # per weight: int8 1 byte + 4 per row; q8_0 1 + 4/32; q4_0 0.5 + 4/32; q4_1 0.5 + 8/32
    assert sizes["q8_0"] == pytest.approx(float_bytes / 4 * (1 + 4 / 32), rel=1e-9)
    assert sizes["q4_0"] == pytest.approx(float_bytes / 4 * (0.5 + 4 / 32), rel=1e-9)
    assert sizes["q4_1"] == pytest.approx(float_bytes / 4 * (0.5 + 8 / 32), rel=1e-9)
    assert sizes["int8"] < sizes["q8_0"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_linear_backward_is_the_dequantized_linears(scheme):
    rng = np.random.default_rng(0)
    qw = reference.quantize_weights(rng.standard_normal((6, 64)).astype(np.float32), scheme)
    w = reference.dequantize_weights(scheme, **qw)
    x = Tensor(rng.standard_normal((3, 64)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(6).astype(np.float32), requires_grad=True)
    dy = rng.standard_normal((3, 6)).astype(np.float32)
    (F.quantized_linear(x, scheme, bias=b, **qw) * Tensor(dy)).sum().backward()
    np.testing.assert_allclose(x.grad, dy @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.grad, dy.sum(axis=0), rtol=1e-6)


def test_a_shape_the_scheme_cannot_hold_is_refused_before_anything_changes():
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=48)    # 48: not a multiple of 32
    model = DecoderLM(config)
    with pytest.raises(ValueError, match="not a multiple of the group size 32.*int8"):
        quantize_model(model, "q4_0")
    assert not any(isinstance(m, QuantizedLinear) for _, m in model.named_modules())
    quantize_model(model, "int8")                                  # per channel takes any in_features
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, "q8_0")
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize_model(DecoderLM(config), "q3_k")


def test_float_checkpoint_passed_as_quantized_is_a_clear_error(tmp_path):
    model = tiny_model("gpt2")
    ckpt.save_checkpoint(str(tmp_path), model, CharTokenizer(CHARS), state={"step": 0})
    with pytest.raises(ckpt.CheckpointError, match="is a float checkpoint"):
        load_quantized(str(tmp_path))
    config = json.loads(read(tmp_path, "config.json"))
    config["quantization"] = {"scheme": "q4_0"}
    rewrite(tmp_path, "config.json", config)
    with pytest.raises(ckpt.CheckpointError, match="holds float weights"):
        ckpt.build_model(ckpt.load_checkpoint(str(tmp_path)))


def test_a_quantized_checkpoint_with_out_of_range_values_is_refused(tmp_path):
    model = quantize_model(tiny_model("gpt2"), "q8_0")
    model.blocks[0].attn.wq.weight.q[0, 0] = -128          # no scheme makes -128; the kernels cannot take it
    ckpt.save_checkpoint(str(tmp_path), model, CharTokenizer(CHARS), state={"step": 0})
    with pytest.raises(ckpt.CheckpointError, match=r"int8 weights must be in \[-127, 127\]"):
        load_quantized(str(tmp_path))


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quantize_then_eval_and_generate(tmp_path, capsys):
    src, text = str(tmp_path / "float"), tmp_path / "text.txt"
    text.write_text("".join(CHARS[i % 64] for i in range(3000)))
    ckpt.save_checkpoint(src, tiny_model("llama"), CharTokenizer(CHARS), state={"step": 7})
    for scheme in SCHEMES:
        out = str(tmp_path / scheme)
        code, stdout, stderr = run_cli(capsys, "quantize", "--ckpt", src, "--scheme", scheme, "--out", out,
                                       "--no-progress")
        assert code == 0, stderr
        assert f"to {scheme}" in stdout and "smaller" in stdout
        assert os.path.getsize(os.path.join(committed(out), "model.safetensors")) < os.path.getsize(
            os.path.join(committed(src), "model.safetensors")) / 2
        code, stdout, stderr = run_cli(capsys, "eval", "--ckpt", out, "--data", str(text), "--no-progress")
        assert code == 0 and json.loads(stdout)["loss"] > 0, stderr
        code, stdout, stderr = run_cli(capsys, "generate", "--ckpt", out, "--prompt", "ABC", "--max-new-tokens", "5",
                                       "--seed", "1")
        assert code == 0 and stdout.startswith("ABC") and len(stdout) == 3 + 5 + 1, stderr
    float_eval = json.loads(run_cli(capsys, "eval", "--ckpt", src, "--data", str(text), "--no-progress")[1])
    q8_eval = json.loads(run_cli(capsys, "eval", "--ckpt", str(tmp_path / "q8_0"), "--data", str(text),
                                 "--no-progress")[1])
    assert q8_eval["loss"] == pytest.approx(float_eval["loss"], rel=0.01)


def test_cli_quantize_bad_input_exits_2_and_overwrites_nothing(tmp_path, capsys):
    src = str(tmp_path / "float")
    ckpt.save_checkpoint(src, tiny_model("gpt2"), CharTokenizer(CHARS), state={"step": 0})
    assert run_cli(capsys, "quantize", "--ckpt", src, "--scheme", "q8_0", "--out", str(tmp_path / "q"))[0] == 0
    before = read(tmp_path / "q", "model.safetensors")
    cases = [
        (("--ckpt", str(tmp_path / "q"), "--scheme", "q4_0", "--out", str(tmp_path / "qq")), "already quantized"),
        (("--ckpt", src, "--scheme", "q4_0", "--out", str(tmp_path / "q")), "already holds a checkpoint"),
        (("--ckpt", src, "--scheme", "q4_0", "--out", src), "must be a new directory"),
        (("--ckpt", str(tmp_path / "none"), "--scheme", "q4_0", "--out", str(tmp_path / "z")), "does not exist"),
    ]
    for args, message in cases:
        code, _, stderr = run_cli(capsys, "quantize", *args)
        assert code == 2 and message in stderr and stderr.count("\n") == 1, (args, stderr)
    assert read(tmp_path / "q", "model.safetensors") == before
    assert not os.path.exists(tmp_path / "qq")


def test_the_old_import_path_minillm_quant_still_works():
    import minillm.nn.quantized
    import minillm.quant
    import minillm.quantize
    for name in ("QuantizedLinear", "QuantizedSwiGLU", "QuantizedEmbedding", "QuantizedWeights", "quantize_model",
                 "model_nbytes", "check_quantizable", "check_quantized_weights"):
        assert getattr(minillm.quant, name) is getattr(minillm.nn.quantized, name)
    assert minillm.quant.load_quantized is minillm.quantize.load_quantized
    assert minillm.quant.quantize_checkpoint is minillm.quantize.quantize_checkpoint
