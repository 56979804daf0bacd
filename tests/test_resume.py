"""The resume rules (docs/reliability.md): the learning-rate schedule against its formula when
--max-iters grows, train_log.jsonl without repeated steps, flags that contradict the checkpoint
refused and what changes stated."""
import json
import os

import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.models import ModelConfig
from minillm.optim import cosine_lr
from minillm.train import TrainConfig, Trainer

from checkpoint_helpers import read

TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40
MODEL = dict(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8)
TRAIN = dict(batch_size=2, lr=3e-3, min_lr=3e-4, warmup_iters=1, eval_interval=3, eval_iters=1, sample_tokens=0)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def trainer(out, data, resume=False, overrides=None, **train):
    return Trainer(ModelConfig(**MODEL), TrainConfig(**{**TRAIN, **train}), str(out), data, resume=resume,
                   progress=False, log=lambda msg: None, resume_overrides=overrides)


def log_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]


def lrs(out):
    """{step: lr used by the step} from train_log.jsonl (a record "step": s + 1 is step s's)."""
    return {r["step"] - 1: r["lr"] for r in log_of(out) if not r.get("eval")}


@pytest.mark.parametrize("first_decay,resume_to,override,expected_decay", [
    (3, 8, None, 8),            # the decay ended at the run's end: it moves to the new end
    (None, 8, None, 8),         # null: always the run's end
    (5, 8, None, 5),            # the decay was set to end elsewhere: it stays
    (3, 8, 20, 20),             # set explicitly on resume
])
def test_the_schedule_continues_by_the_rule(tmp_path, data, first_decay, resume_to, override, expected_decay):
    out = tmp_path / "run"
    trainer(out, data, max_iters=3, lr_decay_iters=first_decay).run()
    resumed = trainer(out, data, resume=True, max_iters=resume_to,
                      overrides={"lr_decay_iters": override} if override else None)
    assert resumed.config.decay_iters == expected_decay
    resumed.run()
    first = {s: cosine_lr(s, 3e-3, 3e-4, 1, first_decay or 3) for s in range(3)}
    after = {s: cosine_lr(s, 3e-3, 3e-4, 1, expected_decay) for s in range(3, resume_to)}
    assert lrs(out) == {**first, **after}


def test_the_same_max_iters_changes_nothing(tmp_path, data):
    straight = trainer(tmp_path / "a", data, max_iters=6, lr_decay_iters=6).run()["step_losses"]
    trainer(tmp_path / "b", data, max_iters=3, lr_decay_iters=6).run()
    assert trainer(tmp_path / "b", data, resume=True, max_iters=6, lr_decay_iters=6).run()["step_losses"] == straight[3:]


def test_a_resumed_run_logs_each_step_once(tmp_path, data):
    out = tmp_path / "run"
    trainer(out, data, max_iters=3, lr_decay_iters=6).run()
    with open(out / "train_log.jsonl", "a") as f:          # a run killed after its checkpoint at step 3 logged on
        f.write(json.dumps({"step": 4, "loss": 9.0}) + "\n" + json.dumps({"step": 5, "loss": 9.0}) + "\n")
        f.write('{"step": 6, "lo')                          # ... and was cut in the middle of a line
    trainer(out, data, resume=True, max_iters=6, lr_decay_iters=6).run()
    records = log_of(out)
    assert [r["step"] for r in records if not r.get("eval")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r.get("eval")] == [0, 3, 6]
    assert all(r["loss"] != 9.0 for r in records if not r.get("eval"))


def test_resume_config_refuses_the_recipe():
    from minillm.train_config import resume_config
    with pytest.raises(ValueError, match=r"\['lr'\] are part of the checkpoint's training recipe"):
        resume_config(TrainConfig().__dict__, 10, {"lr": 1.0})


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": dict(MODEL, vocab_size=None), "train": dict(TRAIN, max_iters=3,
                                                                                        lr_decay_iters=3)}))
    return path


def test_the_command_line_refuses_flags_that_contradict_the_checkpoint(tmp_path, data, config, capsys):
    out = tmp_path / "run"
    common = ["train", "--data", data, "--out", out, "--no-progress"]
    assert cli(capsys, *common, "--config", config)[0] == 0
    before = read(out, "model.safetensors")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": dict(MODEL, vocab_size=None, n_layer=2), "train": TRAIN}))
    for extra, message in ((["--lr", "0.1"], "whose lr is 0.003, but --lr 0.1"),
                           (["--batch-size", "3"], "whose batch_size is 2, but --batch-size 3"),
                           (["--seed", "7"], "whose seed is 1337, but --seed 7"),
                           (["--dropout", "0.2"], "whose dropout is 0.0, but --dropout 0.2"),
                           (["--tokenizer", "bpe"], "whose tokenizer is 'char', but --tokenizer bpe"),
                           (["--config", other], "whose n_layer is 1, but config file")):
        code, _, err = cli(capsys, *common, "--resume", *extra)
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    assert read(out, "model.safetensors") == before
    code, stdout, err = cli(capsys, *common, "--config", config, "--resume", "--lr", "0.003", "--max-iters", "5")
    assert code == 0 and "done: step 5" in stdout, err                      # equal values are fine
    assert "(--resume: the run was to 3 steps and now goes to 5, from step 3)" in err
    state = ckpt.read_checkpoint_meta(str(out))["state"]
    assert state["train_config"]["max_iters"] == 5 and state["train_config"]["lr_decay_iters"] == 5
    code, stdout, _ = cli(capsys, *common, "--resume")
    assert code == 0 and "is at step 5 already" in stdout and "nothing trained" in stdout
    code, stdout, err = cli(capsys, *common, "--resume", "--max-iters", "6", "--eval-interval", "1", "--sample-tokens",
                            "3")
    assert code == 0 and "--- sample ---" in stdout, err                    # what may change does
    assert ckpt.read_checkpoint_meta(str(out))["state"]["train_config"]["eval_interval"] == 1


@pytest.mark.parametrize("decay,max_iters,flag,expected", [(6, 6, 10, 10), (4, 6, 10, 4), (8, 6, 3, 3)])
def test_max_iters_moves_a_new_runs_decay_when_it_ended_at_the_run_end(tmp_path, data, capsys, decay, max_iters,
                                                                       flag, expected):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": dict(MODEL, vocab_size=None),
                                  "train": dict(TRAIN, max_iters=max_iters, lr_decay_iters=decay, eval_interval=50)}))
    out = tmp_path / "run"
    assert cli(capsys, "train", "--config", config, "--data", data, "--out", out, "--no-progress", "--max-iters",
               str(flag))[0] == 0
    assert ckpt.read_checkpoint_meta(str(out))["state"]["train_config"]["lr_decay_iters"] == expected
