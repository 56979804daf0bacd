"""One writer per output directory: a second `minillm train` (or --overwrite, or quantize) on a
directory another process is writing gets one line and exit code 2, and the first run's files
are untouched; the lock goes with the process however it ends; a directory holding weights but
no committed checkpoint is not overwritten without --overwrite."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.files import LOCK_NAME, DirectoryBusy, DirectoryLock, held_here

from checkpoint_helpers import read

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": dict(vocab_size=None, block_size=8, n_layer=1, n_head=2, n_embd=8),
                                  "train": dict(batch_size=2, max_iters=4, eval_interval=2, eval_iters=1,
                                                warmup_iters=1, lr_decay_iters=4, sample_tokens=0)}))
    return ["--config", str(config), "--data", str(data), "--no-progress"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def hold_lock_in_child(directory):
    """A child process that takes the lock on directory and keeps it until killed; returns it."""
    code = ("import sys, time; from minillm.files import DirectoryLock; DirectoryLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code, str(directory)], stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert child.stdout.readline().strip() == "locked"
    return child


def test_the_lock_admits_one_process_is_reentrant_and_dies_with_its_holder(tmp_path):
    directory = tmp_path / "out"
    child = hold_lock_in_child(directory)
    try:
        with pytest.raises(DirectoryBusy, match=rf"is in use by another minillm process \(pid {child.pid} on "):
            DirectoryLock(directory, timeout=0.2).acquire()
    finally:
        child.kill()
        child.wait()
    with DirectoryLock(directory, timeout=0.2):               # free once its holder is gone (killed, not released)
        with DirectoryLock(directory):                        # the same process may take it again
            assert held_here(directory)
        assert held_here(directory)
    assert not held_here(directory)
    assert os.path.exists(directory / LOCK_NAME)


def test_a_second_run_on_a_running_runs_directory_is_refused_and_loses_nothing(tmp_path, files, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *files, "--out", str(out))[0] == 0
    first = {name: read(out, name) for name in ("model.safetensors", "state.json")}
    log = (out / "train_log.jsonl").read_bytes()
    child = hold_lock_in_child(out)                         # a run writing into out (the lock is all that matters)
    try:
        for extra, message in (((), "is in use by another minillm process"),
                               (("--overwrite",), "is in use by another minillm process"),
                               (("--resume", "--max-iters", "6"), "is in use by another minillm process")):
            code, stdout, stderr = run_cli(capsys, "train", *files, "--out", str(out), *extra)
            assert code == 2 and message in stderr and stderr.count("\n") == 1, (extra, stderr)
        code, _, stderr = run_cli(capsys, "quantize", "--ckpt", str(tmp_path / "other"), "--scheme", "q8_0",
                                  "--out", str(out), "--overwrite")
        assert code == 2 and stderr.count("\n") == 1
    finally:
        child.kill()
        child.wait()
    assert {name: read(out, name) for name in first} == first
    assert (out / "train_log.jsonl").read_bytes() == log


def test_two_real_training_runs_on_one_directory(tmp_path, files, capsys):
    """A training run in another process holds --out for its whole run; killed, it leaves its last
    checkpoint, which resumes."""
    out = tmp_path / "run"
    argv = [sys.executable, "-W", "ignore", "-m", "minillm", "train", *files, "--out", str(out), "--max-iters",
            "100000", "--lr-decay-iters", "100000", "--eval-interval", "5"]
    first = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ckpt.has_checkpoint(str(out)):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        code, _, stderr = run_cli(capsys, "train", *files, "--out", str(out), "--overwrite")
        assert code == 2 and f"(pid {first.pid} on " in stderr and stderr.count("\n") == 1, stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    step = ckpt.read_checkpoint_meta(str(out))["state"]["step"]
    code, stdout, stderr = run_cli(capsys, "train", *files, "--out", str(out), "--resume", "--max-iters",
                                   str(step + 2), "--lr-decay-iters", "100000")
    assert code == 0 and f"done: step {step + 2}" in stdout, stderr


def test_weights_without_a_committed_checkpoint_are_not_overwritten(tmp_path, files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"somebody's weights")
    code, _, stderr = run_cli(capsys, "train", *files, "--out", str(out))
    assert code == 2 and "holds checkpoint files (model.safetensors) but no complete checkpoint" in stderr
    code, _, stderr = run_cli(capsys, "train", *files, "--out", str(out), "--resume")
    assert code == 2 and "--resume: no checkpoint in" in stderr and "never committed" in stderr
    assert (out / "model.safetensors").read_bytes() == b"somebody's weights"
    assert run_cli(capsys, "train", *files, "--out", str(out), "--overwrite")[0] == 0
    assert not (out / "model.safetensors").exists() and ckpt.has_checkpoint(str(out))


def test_a_first_save_killed_half_way_does_not_block_the_same_command(tmp_path, files, capsys):
    out = tmp_path / "run"
    (out / ".tmp-99999-0-abcdef").mkdir(parents=True)            # what a kill in the first save leaves
    (out / ".tmp-99999-0-abcdef" / "model.safetensors").write_bytes(b"half")
    code, stdout, stderr = run_cli(capsys, "train", *files, "--out", str(out))
    assert code == 0, stderr
    assert not any(n.startswith(".tmp-") for n in os.listdir(out))
