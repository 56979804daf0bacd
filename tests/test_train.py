import json
import os
import shutil

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.autograd import Tensor
from minillm.cli import main
from minillm.data import TokenData, cached_token_ids, read_text
from minillm.models import ModelConfig
from minillm.optim import AdamW, clip_grad_norm, cosine_lr
from minillm.tokenizers import CharTokenizer, load
from minillm.train import TrainConfig, Trainer

from checkpoint_helpers import as_old_flat_layout, committed, read, rewrite

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8

MODEL = dict(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
TRAIN = dict(batch_size=4, max_iters=6, lr=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=6, eval_interval=3,
             eval_iters=2, sample_tokens=0)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def make_trainer(out, data_file, resume=False, **train):
    return Trainer(ModelConfig(**MODEL), TrainConfig(**{**TRAIN, **train}), str(out), data_file, resume=resume,
                   progress=False, log=lambda msg: None)


def test_training_lowers_the_loss(tmp_path, data_file):
    result = make_trainer(tmp_path / "run", data_file, max_iters=40, eval_interval=40, lr_decay_iters=40).run()
    assert np.mean(result["step_losses"][-5:]) < np.mean(result["step_losses"][:5]) - 0.3


def test_resume_continues_bit_exactly(tmp_path, data_file):
    straight = make_trainer(tmp_path / "a", data_file).run()["step_losses"]
    make_trainer(tmp_path / "b", data_file, max_iters=3).run()
    resumed = make_trainer(tmp_path / "b", data_file, resume=True).run()["step_losses"]
    assert resumed == straight[3:]           # exactly equal floats, dropout included
    log = [json.loads(line) for line in open(tmp_path / "b" / "train_log.jsonl")]
    assert [r["step"] for r in log if not r.get("eval")] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path, data_file):
    trainer = make_trainer(tmp_path / "c", data_file, max_iters=2)
    trainer.run()
    model, tokenizer = ckpt.build_model(ckpt.load_checkpoint(str(tmp_path / "c")))
    ids = np.array([tokenizer.encode("To be, or not")])
    trainer.model.eval(), model.eval()
    np.testing.assert_array_equal(model(ids).data, trainer.model(ids).data)
    assert tokenizer.decode(ids[0]) == "To be, or not"


def test_a_char_tokenizer_is_saved_like_any_other_and_old_checkpoints_still_load(tmp_path, data_file):
    out = tmp_path / "old"
    trainer = make_trainer(out, data_file, max_iters=1)
    trainer.run()
    config = json.loads(read(out, "config.json"))
    assert config["tokenizer"] == {"kind": "char", "path": "tokenizer"}
    assert load(os.path.join(committed(out), "tokenizer")).chars == trainer.tokenizer.chars
    # a checkpoint written before char tokenizers had files: flat, the characters inline in config.json
    as_old_flat_layout(out)
    config["tokenizer"] = {"kind": "char", "chars": "".join(trainer.tokenizer.chars)}
    (out / "config.json").write_text(json.dumps(config))
    shutil.rmtree(out / "tokenizer")
    model, tokenizer = ckpt.build_model(ckpt.load_checkpoint(str(out)))
    assert tokenizer.chars == trainer.tokenizer.chars
    ids = np.array([tokenizer.encode("To be")])
    trainer.model.eval(), model.eval()
    np.testing.assert_array_equal(model(ids).data, trainer.model(ids).data)
    resumed = make_trainer(out, data_file, resume=True, max_iters=2)
    assert resumed.tokenizer.chars == trainer.tokenizer.chars and resumed.run()["step"] == 2


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, data_file):
    out = tmp_path / "nan"
    make_trainer(out, data_file, max_iters=3).run()
    before = {name: read(out, name) for name in ("model.safetensors", "state.json")}
    trainer = make_trainer(out, data_file, resume=True, max_iters=9)
    trainer.model.wte.weight.data[:] = np.nan
    with pytest.raises(RuntimeError, match="the loss became nan at step 3.*left as it was"):
        trainer.run()
    assert {name: read(out, name) for name in before} == before


def test_corrupt_or_missing_checkpoints_are_reported(tmp_path, data_file):
    out = tmp_path / "d"
    make_trainer(out, data_file, max_iters=1).run()
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(str(tmp_path / "nothing"))
    raw = bytearray(read(out, "model.safetensors"))
    raw[-1] ^= 0xFF
    with open(os.path.join(committed(out), "model.safetensors"), "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(str(out))
    os.remove(os.path.join(committed(out), "model.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.load_checkpoint(str(out))


def test_config_that_does_not_match_the_weights_is_reported(tmp_path, data_file):
    out = tmp_path / "e"
    make_trainer(out, data_file, max_iters=1).run()
    config = json.loads(read(out, "config.json"))
    config["model"]["bias"] = False                      # the weights have biases
    rewrite(out, "config.json", config)
    with pytest.raises(ckpt.CheckpointError, match="do not match its config"):
        ckpt.build_model(ckpt.load_checkpoint(str(out)))


def test_token_cache_is_a_memmap_reused_across_runs(tmp_path, data_file):
    tok = CharTokenizer.train(TEXT)
    ids = cached_token_ids(TEXT, tok, data_file, str(tmp_path))
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert tok.decode(ids[:20]) == TEXT[:20]
    files = os.listdir(tmp_path)
    cached_token_ids(TEXT, tok, data_file, str(tmp_path))
    assert os.listdir(tmp_path) == files
    data = TokenData(ids, 0.1)
    x, y = data.get_batch("train", 3, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_data_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="not UTF-8 text .*offset 3"):
        read_text(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_text(str(empty))
    with pytest.raises(ValueError, match="does not exist"):
        read_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        CharTokenizer.train("abc").encode("abd")
    assert len(read_text()) == 1115394    # the built-in corpus


def test_adamw_matches_its_formula_and_schedule_shape():
    p = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = AdamW([{"params": {"p": p}, "weight_decay": 0.1}], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    p.grad = np.array([0.5, -1.0])
    opt.step()
    # step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) after decay by (1 - lr * wd)
    np.testing.assert_allclose(p.data, np.array([1.0, -2.0]) * 0.99 - 0.1 * np.sign([0.5, -1.0]), rtol=1e-7)
    assert cosine_lr(0, 1.0, 0.1, 10, 100) == pytest.approx(1 / 11)
    assert cosine_lr(10, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert cosine_lr(200, 1.0, 0.1, 10, 100) == 0.1
    q = Tensor(np.ones(4), requires_grad=True)
    q.grad = np.full(4, 2.0)
    assert clip_grad_norm([q], 1.0) == pytest.approx(4.0)
    np.testing.assert_allclose(np.linalg.norm(q.grad), 1.0, rtol=1e-5)


# ----- the command line


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": dict(MODEL, vocab_size=None), "train": TRAIN}))
    return str(path)


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_generate_eval(tmp_path, data_file, tiny_config, capsys):
    out = str(tmp_path / "cli")
    code, stdout, stderr = run_cli(capsys, "train", "--config", tiny_config, "--data", data_file, "--out", out,
                                   "--no-progress", "--sample-tokens", "20", "--plot")
    assert code == 0, stderr
    assert "done: step 6" in stdout and "--- sample ---" in stdout and os.path.exists(os.path.join(out, "loss.png"))
    code, stdout, stderr = run_cli(capsys, "generate", "--ckpt", out, "--prompt", "To be", "--max-new-tokens", "10",
                                   "--seed", "1")
    assert code == 0, stderr
    assert stdout.startswith("To be") and len(stdout) == len("To be") + 10 + 1   # streamed, then a newline
    code, stdout, stderr = run_cli(capsys, "generate", "--ckpt", out, "--prompt", "To be", "--max-new-tokens", "10",
                                   "--seed", "1", "--no-stream", "--no-cache")
    assert code == 0 and stdout.startswith("To be")
    code, stdout, _ = run_cli(capsys, "eval", "--ckpt", out, "--data", data_file, "--no-progress")
    result = json.loads(stdout)
    assert code == 0 and result["perplexity"] == pytest.approx(np.exp(result["loss"]), rel=1e-3)


def test_cli_bad_input_exits_2_with_one_line_and_overwrites_nothing(tmp_path, data_file, tiny_config, capsys):
    out = str(tmp_path / "cli")
    assert run_cli(capsys, "train", "--config", tiny_config, "--data", data_file, "--out", out, "--no-progress")[0] == 0
    snapshot = {n: read(out, n) for n in ("model.safetensors", "state.json")}

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (("train", "--config", tiny_config, "--data", data_file, "--out", out), "already holds a checkpoint"),
        (("train", "--config", tiny_config, "--data", str(bad), "--out", str(tmp_path / "x")), "not UTF-8"),
        (("train", "--config", tiny_config, "--data", str(empty), "--out", str(tmp_path / "x")), "is empty"),
        (("generate", "--ckpt", str(tmp_path / "none")), "does not exist"),
        (("generate", "--ckpt", out, "--prompt", "t" * 17), "longer than the model's context of 16"),
        (("generate", "--ckpt", out, "--prompt", "Zebra"), "'Z' is not in the tokenizer's vocabulary"),
        (("eval", "--ckpt", str(tmp_path)), "has no config"),
    ]
    for args, message in cases:
        code, stdout, stderr = run_cli(capsys, *args)
        assert code == 2, (args, stderr)
        assert message in stderr and stderr.count("\n") == 1, (args, stderr)
    assert {n: read(out, n) for n in snapshot} == snapshot
    assert not os.path.exists(tmp_path / "x" / "state.json")


def test_cli_trains_with_a_bpe_tokenizer_and_generates_from_it(tmp_path, data_file, tiny_config, capsys):
    out = str(tmp_path / "bpe")
    code, stdout, stderr = run_cli(capsys, "train", "--config", tiny_config, "--data", data_file, "--out", out,
                                   "--no-progress", "--tokenizer", "bpe", "--tokenizer-vocab-size", "300",
                                   "--max-iters", "2")
    assert code == 0, stderr
    config = json.loads(read(out, "config.json"))
    assert config["tokenizer"] == {"kind": "bpe", "path": "tokenizer"}
    assert config["model"]["vocab_size"] == 300
    code, stdout, stderr = run_cli(capsys, "generate", "--ckpt", out, "--prompt", "To be", "--max-new-tokens", "5",
                                   "--no-stream", "--seed", "0")
    assert code == 0 and stdout.startswith("To be"), stderr
    code, stdout, _ = run_cli(capsys, "eval", "--ckpt", out, "--data", data_file, "--no-progress")
    assert code == 0 and json.loads(stdout)["loss"] > 0
    code, _, stderr = run_cli(capsys, "train", "--config", tiny_config, "--data", data_file, "--out",
                              str(tmp_path / "x"), "--tokenizer", "sentencepiece")
    assert code == 2 and "tokenizer must be one of" in stderr


# ----- Mixture-of-Experts models

MOE_MODEL = dict(MODEL, dropout=0.0, n_experts=4, top_k=2, d_ff=16, capacity_factor=1.0)


def test_moe_model_trains_logs_its_router_and_round_trips(tmp_path, data_file):
    out = tmp_path / "moe"
    trainer = Trainer(ModelConfig(**MOE_MODEL), TrainConfig(**{**TRAIN, "max_iters": 30, "eval_interval": 30,
                                                                "lr_decay_iters": 30}),
                      str(out), data_file, progress=False, log=lambda msg: None)
    result = trainer.run()
    assert np.mean(result["step_losses"][-5:]) < np.mean(result["step_losses"][:5]) - 0.3
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    step = [r for r in log if not r.get("eval")][-1]
    assert {"aux_loss", "z_loss", "expert_load", "dropped"} <= set(step) and step["aux_loss"] >= 1.0 - 1e-6
    assert len(result["expert_load"]) == 1 and sum(result["expert_load"][0]) == pytest.approx(1, abs=1e-4)
    assert "expert_load" in log[-1] and log[-1]["eval"]
    model, tokenizer = ckpt.build_model(ckpt.load_checkpoint(str(out)))
    ids = np.array([tokenizer.encode("To be, or not")])
    trainer.model.eval(), model.eval()
    np.testing.assert_array_equal(model(ids).data, trainer.model(ids).data)


def test_cli_trains_an_moe_model_with_and_without_balancing(tmp_path, data_file, capsys):
    config = tmp_path / "moe.json"
    config.write_text(json.dumps({"model": dict(MOE_MODEL, vocab_size=None), "train": TRAIN}))
    for coef in ("0.01", "0"):
        out = str(tmp_path / f"moe{coef}")
        code, stdout, stderr = run_cli(capsys, "train", "--config", str(config), "--data", data_file, "--out", out,
                                       "--no-progress", "--plot", "--aux-loss-coef", coef)
        assert code == 0, stderr
        assert "expert load" in stdout and "block 0:" in stdout
        assert os.path.exists(os.path.join(out, "expert_load.png"))
        assert json.loads(read(out, "config.json"))["model"]["aux_loss_coef"] == float(coef)
    code, stdout, stderr = run_cli(capsys, "generate", "--ckpt", out, "--prompt", "To be", "--max-new-tokens", "5",
                                   "--seed", "1", "--no-stream")
    assert code == 0 and stdout.startswith("To be"), stderr


def test_moe_resume_continues_bit_exactly(tmp_path, data_file):
    def trainer(out, resume=False, **train):
        return Trainer(ModelConfig(**MOE_MODEL), TrainConfig(**{**TRAIN, **train}), str(out), data_file,
                       resume=resume, progress=False, log=lambda msg: None)
    straight = trainer(tmp_path / "a").run()["step_losses"]
    trainer(tmp_path / "b", max_iters=3).run()
    assert trainer(tmp_path / "b", resume=True).run()["step_losses"] == straight[3:]
