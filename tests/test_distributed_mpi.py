"""`mpiexec -n 2 minillm train` against one process: the same model, checkpoints that cross rank
counts, sharded optimizer state, and failures that stop every rank. Skipped without mpi4py/mpiexec
(pip install 'minillm[mpi]'); each launch is a tiny model for a few steps, one thread per rank.

Tolerance. Two ranks compute the same global-batch gradient as one process, but the float32 sums
over the batch are split in two and added in a different order, so each step's gradient differs
by a few float32 roundings (relative ~1e-7), and AdamW carries that forward. Over 8 steps the
losses of this model stay within ~1e-7 of each other (relative); the tests allow 1e-5. A real
mistake is far larger: weighting the two ranks' mean losses equally instead of by their rows
(7 and 8 of 15), or both ranks training on the same rows, moves the loss by more than 1e-4 within
two steps. The evaluation losses are merged in batch order and must match exactly.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                                reason="needs mpi4py and mpiexec: pip install 'minillm[mpi]'")
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 20
# 15 rows a step (5 x 3 micro-batches): rank 0 trains on 7 of them, rank 1 on 8. No lr_decay_iters,
# so --max-iters 4 and a resume to 8 follow the same schedule as a straight 8.
CONFIG = {"model": dict(vocab_size=None, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
          "train": dict(batch_size=5, grad_accum=3, max_iters=8, lr=3e-3, min_lr=3e-4, warmup_iters=2,
                        eval_interval=4, eval_iters=3, sample_tokens=0)}
RTOL = 1e-5
# 16 tokens a step (8 a rank) for 8 experts a block, top-1: some experts get no token on a rank, or on
# any. Without router losses and capacity limits the MoE objective is the mean cross-entropy, which
# splits over the ranks like a dense model's (the router losses are per micro-batch, see docs).
MOE = dict(block_size=8, n_experts=8, top_k=1, capacity_factor=None, aux_loss_coef=0.0, z_loss_coef=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("mpi")
    (base / "corpus.txt").write_text(TEXT, encoding="utf-8")
    for name, model, train in (("config.json", {}, {}), ("dropout.json", {"dropout": 0.1}, {}),
                               ("moe.json", MOE, {"batch_size": 2, "grad_accum": 1}),
                               ("low-max-loss.json", {}, {"max_loss": 3.0})):   # below the first step's ~3.3
        spec = {"model": CONFIG["model"] | model, "train": CONFIG["train"] | train}
        (base / name).write_text(json.dumps(spec))
    return base


def args(files, out, config="config.json", *more):
    return ["--config", str(files / config), "--data", str(files / "corpus.txt"), "--out", str(out),
            "--no-progress", *more]


def train_here(files, out, *more, config="config.json"):
    assert main(["train", *args(files, out, config, *more)]) == 0


def train_mpi(files, out, *more, config="config.json", env=None, timeout=90):
    """mpiexec -n 2 python -m minillm train ...: this checkout's minillm, one thread per rank."""
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "minillm", "train", *args(files, out, config, *more)]
    environ = {k: v for k, v in os.environ.items() if k != "MINILLM_FAULT"}
    environ |= {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


def log(out):
    records = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    return [r["step"] for r in steps], [r["loss"] for r in steps], [(r["train"], r["val"]) for r in evals]


@pytest.fixture(scope="module")
def one_process(files):
    """The reference: 8 steps in this process."""
    out = files / "one"
    train_here(files, out)
    return log(out)


def test_two_ranks_train_the_same_model_and_their_checkpoint_continues_in_one_process(files, one_process, tmp_path):
    out = tmp_path / "two"
    run = train_mpi(files, out, "--max-iters", "4", "--bucket-mb", "0.01")      # many buckets, overlapped
    assert run.returncode == 0, run.stderr
    assert "data parallel: 2 ranks share each batch of 15 rows" in run.stderr
    train_here(files, out, "--resume")                                          # one process, steps 5-8
    steps, losses, evals = log(out)
    assert steps == list(range(1, 9))                                           # rank 0 alone wrote the log
    np.testing.assert_allclose(losses, one_process[1], rtol=RTOL)
    assert evals == one_process[2]


def test_zero_shards_the_moments_and_resumes_across_rank_counts(files, one_process, tmp_path):
    out = tmp_path / "zero"
    train_here(files, out, "--max-iters", "4")                                  # one process, steps 1-4
    full_state = sum(a.nbytes for a in ckpt.load_checkpoint(str(out), optimizer_wanted=True)["optimizer"].values())
    run = train_mpi(files, out, "--resume", "--zero", "--bucket-mb", "0.01")  # two ranks, steps 5-8
    assert run.returncode == 0, run.stderr
    steps, losses, evals = log(out)
    assert steps == list(range(1, 9))
    np.testing.assert_allclose(losses, one_process[1], rtol=RTOL)
    assert evals == one_process[2]
    per_rank = float(run.stdout.split("optimizer state ")[1].split()[0]) * 2 ** 20
    assert abs(per_rank - full_state / 2) < 0.002 * 2 ** 20                     # half the moments (printed to 3 decimals)
    saved = ckpt.load_checkpoint(str(out), optimizer_wanted=True)               # gathered: the single-process format
    reference = ckpt.load_checkpoint(str(files / "one"), optimizer_wanted=True)
    assert sorted(saved["optimizer"]) == sorted(reference["optimizer"])
    for key, value in reference["optimizer"].items():
        np.testing.assert_allclose(saved["optimizer"][key], value, rtol=1e-3, atol=1e-9, err_msg=key)


def test_moe_experts_unused_on_a_rank_train_as_in_one_process(files, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_here(files, one, "--max-iters", "6", config="moe.json")
    run = train_mpi(files, two, "--max-iters", "6", "--zero", config="moe.json")
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(log(two)[1], log(one)[1], rtol=RTOL)
    saved, reference = (ckpt.load_checkpoint(str(d), optimizer_wanted=True)["optimizer"] for d in (two, one))
    assert sorted(saved) == sorted(reference)           # state only for parameters that had a gradient
    assert len([k for k in reference if k.endswith(".m")]) < len(ckpt.load_checkpoint(str(one))["model"])


def test_dropout_runs_on_two_ranks_resume_bit_exactly(files, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for out, more in ((straight, ["--max-iters", "6"]), (split, ["--max-iters", "3"]),
                      (split, ["--max-iters", "6", "--resume"])):
        run = train_mpi(files, out, *more, config="dropout.json")
        assert run.returncode == 0, run.stderr
    assert log(split)[1] == log(straight)[1]


def test_a_rank_that_dies_stops_the_run_and_the_last_checkpoint_resumes(files, tmp_path):
    out = tmp_path / "dies"
    start = time.monotonic()
    run = train_mpi(files, out, env={"MINILLM_FAULT": "exit:1:6"})
    assert time.monotonic() - start < 60 and run.returncode != 0
    assert "rank 1 exits at step 6" in run.stderr
    assert ckpt.load_checkpoint(str(out), optimizer_wanted=True)["state"]["step"] == 4
    train_here(files, out, "--resume", "--max-iters", "6")


def test_a_rank_that_hangs_is_stopped_by_the_watchdog(files, tmp_path):
    out = tmp_path / "hangs"
    run = train_mpi(files, out, "--comm-timeout", "2", env={"MINILLM_FAULT": "hang:1:6"}, timeout=60)
    assert run.returncode == 3
    assert "rank 0 of 2 waited 2 s for the other ranks in allreduce (step 6): a rank died or hangs" in run.stderr
    assert ckpt.load_checkpoint(str(out))["state"]["step"] == 4


def test_an_error_on_one_rank_stops_every_rank_with_its_message(files, tmp_path):
    run = train_mpi(files, tmp_path / "raises", env={"MINILLM_FAULT": "raise:1:2"})
    assert run.returncode == 1
    assert "minillm: error on rank 1 of 2: RuntimeError: MINILLM_FAULT: injected error on rank 1 at step 2" in run.stderr


def test_bad_input_under_mpiexec_is_one_line_from_rank_0(files, tmp_path):
    run = train_mpi(files, tmp_path / "nothing", "--resume")
    assert run.returncode == 2
    assert run.stderr.count("minillm: error: --resume: no checkpoint in") == 1


@pytest.mark.parametrize("more,config,words", [
    (["--lr", "1e12"], "config.json", "the loss became nan at step 1"),      # weights ~1e12 after one step
    ([], "low-max-loss.json", "(max_loss 3)"),                             # the first evaluation stops it
])
def test_a_diverged_loss_stops_every_rank_with_one_message(files, tmp_path, more, config, words):
    run = train_mpi(files, tmp_path / "diverged", *more, config=config)
    assert run.returncode == 1
    assert run.stderr.count("minillm: error:") == 1 and run.stderr.count(words) == 1 and "left as it was" in run.stderr
    assert "pending" not in run.stderr                       # no collective left in flight at exit
