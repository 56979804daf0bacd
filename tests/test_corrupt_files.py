"""Untrusted files: each kind of damage to a checkpoint, a tokenizer or a --config file is refused
with one line naming the file and the field (exit code 2), never a traceback, a hang or a silent
load. Most cases rewrite a file together with its digest in state.json, so that the check behind
the digests is the one that must catch them."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from minillm.cli import main
from minillm.models import ModelConfig
from minillm.train import TrainConfig, Trainer

from checkpoint_helpers import committed, rewrite

TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    (root / "corpus.txt").write_text(TEXT)
    Trainer(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8),
            TrainConfig(batch_size=2, max_iters=2, eval_interval=2, eval_iters=1, warmup_iters=1, lr_decay_iters=2,
                        sample_tokens=0), str(root / "run"), str(root / "corpus.txt"), progress=False,
            log=lambda msg: None).run()
    return root


@pytest.fixture
def run(base, tmp_path):
    """A fresh copy of the trained run directory."""
    shutil.copytree(base / "run", tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, err


def generate(run, capsys):
    return cli(capsys, "generate", "--ckpt", run, "--prompt", "to", "--max-new-tokens", "2", "--seed", "0")


def resume(run, base, capsys):
    return cli(capsys, "train", "--out", run, "--data", base / "corpus.txt", "--resume", "--max-iters", "3",
               "--no-progress")


def json_of(run, name):
    return json.load(open(os.path.join(committed(run), name)))


def edited(run, name, change):
    """Rewrite run's committed JSON file `name` (digest kept right) with change(obj) applied."""
    value = json_of(run, name)
    change(value)
    rewrite(run, name, value)


def assert_refused(result, *words):
    code, err = result
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def set_at(path, value):
    def change(obj):
        *parents, last = path
        for key in parents:
            obj = obj[key]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return change


@pytest.mark.parametrize("path,value,words", [
    (["model"], [], ["config.json", "model must be an object, got list"]),
    (["model", "n_layer"], "2", ["config.json", "model: n_layer must be an int, got str '2'"]),
    (["model", "dropout"], None, ["config.json", "dropout must be a number, got null"]),
    (["model", "n_layer"], 1000000, ["config.json", "describes", "holds"]),
    (["model", "n_embd"], 16, ["config.json", "do not match the weights' token table"]),
    (["tokenizer"], None, ["config.json", "tokenizer must be an object, got null"]),
    (["tokenizer", "path"], os.path.join("..", "..", "run"), ["tokenizer entry: path", "leads outside the checkpoint"]),
    (["tokenizer", "path"], os.path.abspath(os.sep), ["leads outside the checkpoint"]),
    (["format"], 7, ["config.json", "format must be a string, got int 7"]),
    (["quantization"], ["q8_0"], ["config.json", "quantization must be an object or null"]),
])
def test_a_config_json_of_the_wrong_kinds_is_refused(run, capsys, path, value, words):
    edited(run, "config.json", set_at(path, value))
    assert_refused(generate(run, capsys), *words)


@pytest.mark.parametrize("path,value,words", [
    (["digests"], KeyError, ["state.json", "has no 'digests'"]),
    (["digests"], [], ["state.json", "digests must be an object, got list"]),
    (["digests", "model.safetensors"], KeyError, ["digests do not cover model.safetensors"]),
    (["digests", "model.safetensors"], "abc", ["digests.model.safetensors must be a SHA-256"]),
    (["digests", os.path.join("..", "..", "corpus.txt")], "0" * 64, ["which is not a file inside the checkpoint"]),
    (["digests", os.path.join(os.sep, "dev", "zero")], "0" * 64, ["which is not a file inside the checkpoint"]),
    (["step"], "2", ["state.json", "step must be an int, got str '2'"]),
    (["best_val"], "low", ["state.json", "best_val must be a number or null"]),
])
def test_a_state_json_of_the_wrong_kinds_is_refused(run, capsys, path, value, words):
    edited(run, "state.json", set_at(path, value))
    assert_refused(generate(run, capsys), *words)


@pytest.mark.parametrize("path,value,words", [
    (["rng"], [], ["state.json", "rng must be an object"]),
    (["rng", "data"], {"bit_generator": "PCG64", "state": 3}, ["rng.data is not a NumPy PCG64 state"]),
    (["train_config"], None, ["state.json", "train_config must be an object, got null"]),
    (["train_config", "lr"], "fast", ["state.json", "train_config: lr must be a number, got str 'fast'"]),
    (["train_config", "batch_size"], 0, ["train_config: batch_size must be >= 1, got 0"]),
    (["optimizer_step"], KeyError, ["has no 'optimizer_step': it cannot be resumed"]),
])
def test_a_state_json_that_cannot_be_resumed_is_refused(run, base, capsys, path, value, words):
    edited(run, "state.json", set_at(path, value))
    assert_refused(resume(run, base, capsys), *words)


def test_digests_cannot_lead_outside_through_a_link_or_to_a_device(run, capsys):
    os.symlink(os.path.join(os.sep, "dev", "zero"), os.path.join(committed(run), "zero"))
    edited(run, "state.json", set_at(["digests", "zero"], "0" * 64))
    assert_refused(generate(run, capsys), "digests name 'zero', which leads outside the checkpoint")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "state.json"])
def test_a_directory_where_a_file_belongs_is_refused(run, capsys, name):
    path = os.path.join(committed(run), name)
    os.remove(path)
    os.mkdir(path)
    assert_refused(generate(run, capsys), name, "is not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["latest", "config.json", "model.safetensors"])
def test_a_fifo_is_never_opened(run, capsys, name):
    path = os.path.join(run if name == "latest" else committed(run), name)
    os.remove(path)
    os.mkfifo(path)
    assert_refused(generate(run, capsys), "is not a regular file")        # a read would block forever


def safetensors_with(run, change):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(committed(run), "model.safetensors")
    arrays = load_file(path)
    change(arrays)
    save_file(arrays, path)
    rewrite(run, "model.safetensors", open(path, "rb").read())


@pytest.mark.parametrize("change,words", [
    (lambda a: a.update({"wte.weight": a["wte.weight"].astype(np.int32)}), ["tensor 'wte.weight' is int32"]),
    (lambda a: a["blocks.0.attn.wq.weight"].__setitem__((0, 0), np.nan),
     ["tensor 'blocks.0.attn.wq.weight' holds NaN or infinite values"]),
    (lambda a: a["wte.weight"].__setitem__((1, 1), -np.inf), ["tensor 'wte.weight' holds NaN or infinite values"]),
    (lambda a: a.update({"wte.weight": a["wte.weight"].astype(np.complex64)}), ["wte.weight", "complex64"]),
])
def test_weights_of_the_wrong_dtype_or_not_finite_are_refused(run, capsys, change, words):
    safetensors_with(run, change)
    assert_refused(generate(run, capsys), "model.safetensors", *words)


@pytest.mark.parametrize("change,words", [
    (lambda a: a.update({"wte.weight.m": a["wte.weight.m"][:3]}), ["tensor 'wte.weight.m'", "its parameter is"]),
    (lambda a: a.update({"wte.weight.step": a["wte.weight.step"].astype(np.float32)}),
     ["tensor 'wte.weight.step' is float32", "a step count is one non-negative int64"]),
    (lambda a: a.update({"wte.weight.step": np.array([-1], dtype=np.int64)}), ["tensor 'wte.weight.step'"]),
])
def test_optimizer_moments_and_counts_of_the_wrong_kind_are_refused(run, base, capsys, change, words):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(committed(run), "optimizer.safetensors")
    arrays = load_file(path)
    assert arrays["wte.weight.step"].dtype == np.int64          # AdamW's per-parameter count is saved
    change(arrays)
    save_file(arrays, path)
    rewrite(run, "optimizer.safetensors", open(path, "rb").read())
    assert_refused(resume(run, base, capsys), "optimizer.safetensors", *words)


def test_a_safetensors_file_with_a_lying_header_is_refused(run, capsys):
    path = os.path.join(committed(run), "model.safetensors")
    raw = bytearray(open(path, "rb").read())
    raw[0:8] = (2 ** 62).to_bytes(8, "little")                # a header length far past the file
    rewrite(run, "model.safetensors", bytes(raw))
    assert_refused(generate(run, capsys), "model.safetensors", "is corrupt")


def test_a_tokenizer_bigger_than_the_model_is_refused(run, capsys):
    tokenizer = os.path.join(committed(run), "tokenizer", "minillm_tokenizer.json")
    meta = json.load(open(tokenizer))
    meta["chars"] = "".join(sorted(set(meta["chars"]) | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")))
    rewrite(run, "tokenizer/minillm_tokenizer.json", meta)
    assert_refused(generate(run, capsys), "the tokenizer has", "more than the model's vocab_size 40")


@pytest.mark.parametrize("meta,words", [
    ({"special_tokens": []}, ["minillm_tokenizer.json", "special_tokens must be an object"]),
    ({"chars": 5}, ["minillm_tokenizer.json", "chars must be a string"]),
    ({"kind": None}, ["minillm_tokenizer.json", "kind must be a string, got null"]),
])
def test_a_tokenizer_file_of_the_wrong_kinds_is_refused(run, capsys, meta, words):
    path = os.path.join(committed(run), "tokenizer", "minillm_tokenizer.json")
    rewrite(run, "tokenizer/minillm_tokenizer.json", {**json.load(open(path)), **meta})
    assert_refused(generate(run, capsys), *words)


@pytest.mark.parametrize("line,words", [
    (b"YQ== -1\n", ["rank -1 is out of range"]),
    (b"YQ== 1099511627776\n", ["rank 1099511627776 is out of range"]),
    (b"YQ== 3\n", ["is given twice"]),
    (b"not-base64! 7\n", ["is not `base64-token rank`"]),
])
def test_a_tiktoken_file_with_a_bad_rank_is_refused(tmp_path, capsys, line, words):
    good = b"".join(__import__("base64").b64encode(bytes([b])) + b" %d\n" % b for b in range(256))
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(good + line)
    assert_refused(cli(capsys, "tokenizer", "encode", "--tokenizer", path, "--text", "hi"), "bad.tiktoken", *words)


@pytest.mark.parametrize("spec,words", [
    ('{"model": [], "train": {}}', ["config file", "model must be an object, got list"]),
    ('{"model": {}, "train": {"lr": "fast"}}', ["config file", "train: lr must be a number, got str 'fast'"]),
    ('{"model": {}, "train": {"batch_size": null}}', ["train: batch_size must be an int, got null"]),
    ('{"model": {}, "train": {"batch_size": 0}}', ["train: batch_size must be >= 1, got 0"]),
    ('{"model": {"n_layer": 2.5}, "train": {}}', ["model: n_layer must be an int, got float 2.5"]),
    ('{"model": {"n_head": NaN}, "train": {}}', ["model: n_head must be an int, got float nan"]),
    ('{"model": {}, "train": {"lr": Infinity}}', ["train: lr must be a finite number, got float inf"]),
    ('[1, 2]', ["must hold a JSON object, not a list"]),
    ('{"model": {}, "train": {"warp": 9}}', ["train: unknown keys ['warp']"]),
])
def test_a_config_file_of_the_wrong_kinds_is_refused(base, tmp_path, capsys, spec, words):
    config = tmp_path / "c.json"
    config.write_text(spec)
    out = tmp_path / "out"
    assert_refused(cli(capsys, "train", "--config", config, "--data", base / "corpus.txt", "--out", out), *words)
    assert not out.exists()                                        # refused before anything was written


def test_the_digest_check_itself_still_catches_a_changed_file(run, capsys):
    path = os.path.join(committed(run), "config.json")
    config = json.load(open(path))
    config["model"]["dropout"] = 0.5
    with open(path, "w") as f:
        json.dump(config, f)                                     # without its digest: corrupt
    assert_refused(generate(run, capsys), "config.json", "its SHA-256 does not match state.json")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() != json_of(run, "state.json")["digests"]["config.json"]
