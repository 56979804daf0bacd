"""`mpiexec -n 2 minillm finetune` against one process: the same loss curve, the same evaluation,
checkpoints that resume on another number of ranks, rank 0 alone writing, and failures that stop
every rank. Skipped without mpi4py/mpiexec (pip install 'minillm[mpi]'); a tiny char model, LoRA,
a few steps, one thread a rank.

Tolerance. The two ranks pad their own shards (shorter rows than the whole batch's) and their
gradients are summed after each rank has summed its own rows, so the float32 additions happen in
another order and each step's gradient differs from one process's by a few roundings (relative
~1e-7); AdamW carries that on. Over 6 steps the losses stay within ~1e-7 (relative) of each other;
the test allows 1e-5. A real mistake is far larger: weighting the ranks' mean losses equally
instead of by their trained tokens (shards of 1-9 letter words differ widely) moves the loss by
about 1e-2 (relative) within 3 steps. Evaluation is
shared round robin and merged in batch order: on the same weights it must equal one process's
exactly.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.finetune import FinetuneConfig, Finetuner
from minillm.models import DecoderLM, ModelConfig
from minillm.tokenizers import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                                reason="needs mpi4py and mpiexec: pip install 'minillm[mpi]'")
MODEL = dict(block_size=32, n_layer=2, n_head=2, n_embd=32, d_ff=64, norm="rmsnorm", activation="swiglu",
             positions="rope", bias=False)
# 5 examples a step (rank 0 takes 2, rank 1 takes 3), 12 held out: 3 eval batches, shared 2 + 1
FLAGS = ["--method", "lora", "--lora-r", "2", "--target-modules", "all-linear", "--lr", "1e-2", "--batch-size", "5",
         "--eval-interval", "3", "--eval-fraction", "0.3", "--no-progress"]
RTOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft-mpi")
    tok = CharTokenizer("".join(sorted("abcdefghij=")))
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **MODEL), rng=np.random.default_rng(0))
    save_checkpoint(base / "base", model, tok, state={"step": 0})
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), int(rng.integers(1, 10)))) for _ in range(40)]
    (base / "d.jsonl").write_text("".join(json.dumps({"prompt": w + "=", "completion": w}) + "\n" for w in words))
    (base / "bad.jsonl").write_text('{"prompt": "ab=", "completion": "ab"}\nnot json\n')
    return base


def flags(files, out, *more, data="d.jsonl"):
    return ["--model", str(files / "base"), "--data", str(files / data), "--out", str(out), *FLAGS, *more]


def finetune_here(files, out, *more):
    assert main(["finetune", *flags(files, out, *more)]) == 0


def finetune_mpi(files, out, *more, data="d.jsonl", env=None, rank1_out=None, timeout=90):
    """mpiexec -n 2 python -m minillm finetune ...: this checkout's minillm, one thread a rank.
    rank1_out: rank 1 gets this --out instead (rank 0's flags decide the run: it is never created)."""
    command = [sys.executable, "-m", "minillm", "finetune"]
    if rank1_out is None:
        launch = [MPIEXEC, "-n", "2", *command, *flags(files, out, *more, data=data)]
    else:
        launch = [MPIEXEC, "-n", "1", *command, *flags(files, out, *more, data=data), ":",
                  "-n", "1", *command, *flags(files, rank1_out, *more, data=data)]
    environ = {k: v for k, v in os.environ.items() if k != "MINILLM_FAULT"}
    environ |= {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(launch, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


def log(out):
    records = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    steps = [r for r in records if not r.get("eval")]
    return [r["step"] for r in steps], [r["loss"] for r in steps], [r for r in records if r.get("eval")]


@pytest.fixture(scope="module")
def one_process(files):
    """The reference, in this process: 3 steps, then resumed to 6 (the cosine schedule ends at
    --max-iters, so this is the curve a run stopped at 3 and resumed to 6 follows)."""
    out = files / "one"
    finetune_here(files, out, "--max-iters", "3")
    finetune_here(files, out, "--max-iters", "6", "--resume")
    return log(out)


def test_two_ranks_give_the_one_process_curve_and_their_checkpoint_continues_in_one_process(files, one_process,
                                                                                             tmp_path):
    out, elsewhere = tmp_path / "two", tmp_path / "rank1"
    run = finetune_mpi(files, out, "--max-iters", "3", "--bucket-mb", "0.001", rank1_out=elsewhere)  # many buckets
    assert run.returncode == 0, run.stderr
    assert "data parallel: 2 ranks share each batch of 5 examples" in run.stderr
    assert run.stdout.count("finetune lora:") == 1 and run.stdout.count("done: step 3") == 1    # rank 0 alone prints
    assert not elsewhere.exists()                                    # rank 1 wrote nothing, not even a directory
    assert os.path.isfile(out / "adapter" / "adapter_model.safetensors") and os.path.isfile(out / "finetune.json")
    steps, losses, evals = log(out)
    assert steps == [1, 2, 3]                                        # one writer of the log
    np.testing.assert_allclose(losses, one_process[1][:3], rtol=RTOL)
    on_its_weights = Finetuner(str(files / "base"), str(files / "d.jsonl"), str(out), FinetuneConfig(max_iters=3),
                               resume=True, progress=False).evaluate()
    assert {k: evals[0][k] for k in on_its_weights} == on_its_weights    # the shared eval is one process's, exactly
    finetune_here(files, out, "--max-iters", "6", "--resume")        # one process, steps 4-6
    steps, losses, _ = log(out)
    assert steps == list(range(1, 7))
    np.testing.assert_allclose(losses, one_process[1], rtol=RTOL)


def test_a_one_process_checkpoint_resumes_on_two_ranks_with_sharded_moments(files, one_process, tmp_path):
    out = tmp_path / "zero"
    finetune_here(files, out, "--max-iters", "3")
    full_state = sum(a.nbytes for a in ckpt.load_checkpoint(str(out), optimizer_wanted=True)["optimizer"].values())
    run = finetune_mpi(files, out, "--max-iters", "6", "--resume", "--zero")
    assert run.returncode == 0, run.stderr
    steps, losses, _ = log(out)
    assert steps == list(range(1, 7))
    np.testing.assert_allclose(losses, one_process[1], rtol=RTOL)
    per_rank = float(run.stdout.split("optimizer state ")[1].split()[0]) * 2 ** 20
    assert abs(per_rank - full_state / 2) < 0.002 * 2 ** 20          # half the moments (printed to 3 decimals)
    saved = ckpt.load_checkpoint(str(out), optimizer_wanted=True)["optimizer"]      # gathered: one process's format
    assert sorted(saved) == sorted(ckpt.load_checkpoint(str(files / "one"), optimizer_wanted=True)["optimizer"])


def test_a_rank_that_dies_stops_the_run_and_the_last_checkpoint_resumes(files, tmp_path):
    out = tmp_path / "dies"
    run = finetune_mpi(files, out, "--max-iters", "6", env={"MINILLM_FAULT": "exit:1:4"})
    assert run.returncode != 0 and "rank 1 exits at step 4" in run.stderr
    assert ckpt.load_checkpoint(str(out))["state"]["step"] == 3
    finetune_here(files, out, "--max-iters", "6", "--resume")


def test_a_rank_that_hangs_is_stopped_by_the_watchdog(files, tmp_path):
    run = finetune_mpi(files, tmp_path / "hangs", "--max-iters", "6", "--comm-timeout", "2",
                       env={"MINILLM_FAULT": "hang:1:1"}, timeout=60)
    assert run.returncode == 3
    assert "rank 0 of 2 waited 2 s for the other ranks in allreduce (step 1): a rank died or hangs" in run.stderr


def test_bad_data_under_mpiexec_is_one_line_from_rank_0_and_nothing_is_written(files, tmp_path):
    run = finetune_mpi(files, tmp_path / "bad", data="bad.jsonl")
    assert run.returncode == 2
    assert run.stderr.count("minillm: error:") == 1 and "bad.jsonl:2: not valid JSON" in run.stderr
    assert not (tmp_path / "bad").exists()
