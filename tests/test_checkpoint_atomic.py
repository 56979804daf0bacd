"""A checkpoint save is one atomic commit: killed or failing at any of its points it leaves the
previous checkpoint or the new one, whole; what it leaves behind is cleaned by the next save or
load; a reader polling the directory during training never sees a mismatched checkpoint.

The kills are not timed: checkpoint.fault_hook is called at every point of a save, and a forked
child exits there (os._exit, as a kill: no clean-up, no finally), once for each point."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.models import DecoderLM, ModelConfig
from minillm.optim import AdamW, param_groups
from minillm.tokenizers import CharTokenizer
from minillm.train import TrainConfig, Trainer

from checkpoint_helpers import as_old_flat_layout, committed

CONFIG = ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8)
TOKENIZER = CharTokenizer("".join(chr(ord("a") + i) for i in range(26)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_and_optimizer(seed):
    model = DecoderLM(CONFIG, rng=np.random.default_rng(seed))
    optimizer = AdamW(param_groups(model, 0.1), 1e-3)
    for p in model.parameters():
        p.grad = np.full_like(p.data, 0.01 * (seed + 1))
    optimizer.step()
    return model, optimizer


def save(out, seed, step):
    model, optimizer = model_and_optimizer(seed)
    return ckpt.save_checkpoint(str(out), model, TOKENIZER, optimizer, {"step": step})


def loaded_step(out):
    """The step of the checkpoint that loads from out, after checking its weights are that save's."""
    checkpoint = ckpt.load_checkpoint(str(out), optimizer_wanted=True)
    step = checkpoint["state"]["step"]
    model, _ = model_and_optimizer({1: 0, 2: 1, 3: 0}[step])
    expected = model.state_dict()
    assert sorted(checkpoint["model"]) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(checkpoint["model"][name], array, err_msg=name)
    ckpt.build_model(checkpoint)
    return step


def save_points(tmp_path):
    """The names of the points of one save, in order."""
    names = []
    ckpt.fault_hook = names.append
    try:
        save(tmp_path / "probe", 0, 1)
    finally:
        ckpt.fault_hook = None
    return names


def committed_entries(out):
    return sorted(n for n in os.listdir(out) if n != ".minillm.lock")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_save_killed_at_each_point_leaves_the_old_or_the_new_checkpoint(tmp_path):
    points = save_points(tmp_path)
    assert len(points) >= 8 and points.index("committed") > points.index("pointer written")
    out = tmp_path / "run"
    outcomes = []
    for k, point in enumerate(points):
        shutil.rmtree(out, ignore_errors=True)
        save(out, 0, 1)                                      # the previous checkpoint: step 1
        assert committed_entries(out) == ["checkpoint-1", "latest"]
        pid = os.fork()
        if pid == 0:                                         # the child: killed at point k of the save of step 2
            try:
                def kill_at(name, seen=[]):
                    if len(seen) == k:
                        os._exit(17)
                    seen.append(name)
                ckpt.fault_hook = kill_at
                save(out, 1, 2)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 17, (point, status)
        left = committed_entries(out)
        step = loaded_step(out)                              # loads whole, as step 1 or step 2, never a mix
        assert step == (2 if k > points.index("pointer written") else 1), (point, step)
        assert committed_entries(out) == [f"checkpoint-{step}", "latest"], (point, left)   # the load cleaned up
        outcomes.append((point, step, len(left) > 2))
    assert {s for _, s, _ in outcomes} == {1, 2}
    assert sum(stale for *_, stale in outcomes) >= len(points) - 2    # most kills left something to clean


def test_a_save_that_fails_at_each_point_leaves_the_old_or_the_new_checkpoint(tmp_path):
    points = save_points(tmp_path)
    out = tmp_path / "run"
    for k, point in enumerate(points):
        shutil.rmtree(out, ignore_errors=True)
        save(out, 0, 1)

        def fail_at(name, seen=[]):
            if len(seen) == k:
                raise OSError(28, "No space left on device")
            seen.append(name)
        ckpt.fault_hook = fail_at
        try:
            with pytest.raises(OSError, match="No space left"):
                save(out, 1, 2)
        finally:
            ckpt.fault_hook = None
        step = loaded_step(out)
        assert step == (2 if k > points.index("pointer written") else 1), point
        assert not any(n.startswith(".tmp-") for n in os.listdir(out)), point    # removed as it failed
        save(out, 0, 3)
        assert committed_entries(out) == ["checkpoint-3", "latest"], point       # the next save cleans the rest


def test_a_training_run_killed_in_a_save_resumes_from_the_last_commit(tmp_path):
    """A real `minillm train` killed (MINILLM_SAVE_FAULT) in the middle of its second save."""
    data = tmp_path / "corpus.txt"
    data.write_text("to be or not to be, that is the question. " * 60)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": dict(vocab_size=None, block_size=8, n_layer=1, n_head=2, n_embd=8),
                                  "train": dict(batch_size=2, max_iters=4, eval_interval=2, eval_iters=1,
                                                warmup_iters=1, lr_decay_iters=4, sample_tokens=0)}))
    out = tmp_path / "run"
    argv = [sys.executable, "-W", "ignore", "-m", "minillm", "train", "--config", str(config), "--data", str(data),
            "--out", str(out), "--no-progress"]
    points = len(save_points(tmp_path))
    env = dict(os.environ, PYTHONPATH=ROOT, MINILLM_SAVE_FAULT=str(points + 4))    # the 2nd save, its 5th point
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 17, killed.stderr
    assert ckpt.read_checkpoint_meta(str(out))["state"]["step"] == 0
    env.pop("MINILLM_SAVE_FAULT")
    resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and "done: step 4" in resumed.stdout, resumed.stderr
    assert committed_entries(out) == ["checkpoint-4", "latest", "train_log.jsonl"]


def test_a_reader_polling_during_training_never_sees_a_mismatch(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("to be or not to be, that is the question. " * 60)
    out = str(tmp_path / "run")
    trainer = Trainer(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8),
                      TrainConfig(batch_size=2, max_iters=10, eval_interval=1, eval_iters=1, warmup_iters=1,
                                  lr_decay_iters=10, sample_tokens=0), out, str(data), progress=False,
                      log=lambda msg: None)
    done, seen, errors = threading.Event(), set(), []

    def poll():
        while not done.is_set():
            if not ckpt.has_checkpoint(out):
                continue
            try:
                checkpoint = ckpt.load_checkpoint(out, optimizer_wanted=True)
                ckpt.build_model(checkpoint)
                step = checkpoint["state"]["step"]
                assert os.path.basename(checkpoint["directory"]) == f"checkpoint-{step}"
                seen.add(step)
            except Exception as error:      # noqa: BLE001 (any failure of the reader is the finding)
                errors.append(repr(error))
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        trainer.run()
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert len(seen) >= 3, seen                         # it read many checkpoints while they were replaced


def test_old_flat_checkpoints_load_and_a_new_save_replaces_them(tmp_path):
    out = tmp_path / "run"
    save(out, 0, 1)
    as_old_flat_layout(out)
    assert "model.safetensors" in os.listdir(out) and ckpt.resolve_checkpoint(str(out)) == str(out)
    assert loaded_step(out) == 1
    save(out, 1, 2)
    assert committed_entries(out) == ["checkpoint-2", "latest"]     # the flat files went with the commit
    assert loaded_step(out) == 2
    assert loaded_step(committed(out)) == 2                         # a checkpoint-N directory loads alone too


def test_a_corrupt_pointer_is_reported(tmp_path):
    out = tmp_path / "run"
    save(out, 0, 1)
    up = os.path.join("..", "..", "etc").encode()
    for content, message in ((up, "is corrupt"), (b"checkpoint-9\n", "which is not a directory"),
                             (b"\xff\xfe", "cannot read checkpoint pointer"), (b"", "is corrupt")):
        (out / "latest").write_bytes(content)
        with pytest.raises(ckpt.CheckpointError, match=message):
            ckpt.load_checkpoint(str(out))
