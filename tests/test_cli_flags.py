"""Every flag is checked (type, range, meaning) before any work: one line naming the flag, exit
code 2, nothing written. Thread counts far beyond the machine are refused (flags) or clamped
(OMP_NUM_THREADS, set_num_threads), never a crash."""
import json
import os
import subprocess
import sys

import pytest

import minillm
from minillm.cli import main
from minillm.config import max_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40


@pytest.fixture
def files(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    (tmp_path / "tiny.json").write_text(json.dumps({"model": dict(vocab_size=None, block_size=8, n_layer=1, n_head=2,
                                                                  n_embd=8),
                                                    "train": dict(batch_size=2, max_iters=2, eval_interval=2,
                                                                  eval_iters=1, sample_tokens=0)}))
    (tmp_path / "a_file").write_text("not a directory")
    return tmp_path


TRAIN = ["train", "--config", "{d}/tiny.json", "--data", "{d}/corpus.txt", "--out", "{d}/out", "--no-progress"]
BAD = [
    (TRAIN + ["--eval-interval", "0"], "argument --eval-interval: must be an integer >= 1, got '0'"),
    (TRAIN + ["--grad-accum", "0"], "argument --grad-accum: must be an integer >= 1"),
    (TRAIN + ["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (TRAIN + ["--batch-size", "-3"], "argument --batch-size: must be an integer >= 1, got '-3'"),
    (TRAIN + ["--eval-iters", "-1"], "argument --eval-iters: must be an integer >= 0, got '-1'"),
    (TRAIN + ["--lr", "-0.1"], "argument --lr: must be a finite number > 0, got '-0.1'"),
    (TRAIN + ["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (TRAIN + ["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (TRAIN + ["--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (TRAIN + ["--dropout", "1"], "argument --dropout: must be a finite number in [0, 1)"),
    (TRAIN + ["--max-iters", "2.5"], "argument --max-iters: must be an integer >= 0, got '2.5'"),
    (TRAIN + ["--threads", "1000000"], f"argument --threads: must be an integer >= 1 and <= {max_threads()}"),
    (TRAIN + ["--threads", "0"], "argument --threads: must be an integer >= 1"),
    (TRAIN + ["--bucket-mb", "0"], "argument --bucket-mb: must be a finite number > 0"),
    (TRAIN + ["--comm-timeout", "-5"], "argument --comm-timeout: must be a finite number >= 0"),
    (TRAIN + ["--aux-loss-coef", "nan"], "argument --aux-loss-coef: must be a finite number >= 0"),
    (TRAIN + ["--tokenizer-vocab-size", "0"], "argument --tokenizer-vocab-size: must be an integer >= 1"),
    (TRAIN + ["--lr-decay-iters", "0"], "argument --lr-decay-iters: must be an integer >= 1"),
    (["train", "--config", "{d}/missing.json", "--out", "{d}/out"], "argument --config: file '{d}/missing.json' does not exist"),
    (["train", "--data", "{d}/missing.txt", "--out", "{d}/out"], "argument --data: file '{d}/missing.txt' does not exist"),
    (["train", "--data", "{d}", "--out", "{d}/out"], "argument --data: '{d}' is not a regular file"),
    (["train", "--out", "{d}/a_file"], "argument --out: '{d}/a_file' exists and is not a directory"),
    (TRAIN[:-3] + ["--out", "{d}/a_file/run"], "minillm: error: '{d}/a_file/run' Not a directory"),
    (TRAIN + ["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["generate", "--ckpt", "{d}", "--temperature", "nan"], "argument --temperature: must be a finite number >= 0"),
    (["generate", "--ckpt", "{d}", "--temperature", "-1"], "argument --temperature: must be a finite number >= 0"),
    (["generate", "--ckpt", "{d}", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 0"),
    (["generate", "--ckpt", "{d}", "--top-k", "0"], "argument --top-k: must be an integer >= 1"),
    (["generate", "--ckpt", "{d}", "--top-p", "0"], "argument --top-p: must be a finite number in (0, 1]"),
    (["generate", "--ckpt", "{d}", "--top-p", "1.5"], "argument --top-p: must be a finite number in (0, 1]"),
    (["generate", "--ckpt", "{d}", "--num-samples", "0"], "argument --num-samples: must be an integer >= 1"),
    (["generate", "--ckpt", "{d}", "--seed", "x"], "argument --seed: must be an integer >= 0"),
    (["generate"], "give exactly one of --ckpt DIR and --model SOURCE"),
    (["eval", "--ckpt", "{d}", "--val-fraction", "0"], "argument --val-fraction: must be a finite number in (0, 1)"),
    (["eval", "--ckpt", "{d}", "--val-fraction", "1"], "argument --val-fraction: must be a finite number in (0, 1)"),
    (["eval", "--ckpt", "{d}", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["quantize", "--ckpt", "{d}", "--scheme", "q8_0", "--out", "{d}/a_file"], "argument --out: '{d}/a_file' exists"),
    (["quantize", "--ckpt", "{d}", "--scheme", "q3"], "argument --scheme: invalid choice: 'q3'"),
    (["tokenizer", "train", "--vocab-size", "0", "--input", "{d}/corpus.txt", "--out", "{d}/tok"],
     "argument --vocab-size: must be an integer >= 1"),
    (["tokenizer", "train", "--vocab-size", "300", "--input", "{d}/missing.txt", "--out", "{d}/tok"],
     "argument --input: file '{d}/missing.txt' does not exist"),
    (["tokenizer", "train", "--vocab-size", "300", "--input", "{d}/corpus.txt", "--out", "{d}/tok", "--special", ""],
     "argument --special: must not be empty"),
    (["tokenizer", "train", "--vocab-size", "300", "--input", "{d}/corpus.txt", "--out", "{d}/tok", "--pattern", "["],
     "pattern '[' is not a valid regex"),
    (["tokenizer", "train", "--vocab-size", "300", "--input", "{d}/corpus.txt", "--out", "{d}/tok", "--pattern", r"\w+"],
     "drops text"),
    (["tokenizer", "train", "--vocab-size", "300", "--input", "{d}/corpus.txt", "--out", "{d}/tok", "--pattern",
      r"(\w+)|\W"], "has capturing groups"),
    (["tokenizer", "encode", "--tokenizer", "{d}/tok", "--input", "{d}/missing.txt"], "argument --input: file"),
    (["scaling", "plan", "--flops", "-1"], "argument --flops: must be a finite number > 0"),
    (["scaling", "sweep", "--out", "{d}/sweep", "--lr", "0"], "argument --lr: must be a finite number > 0"),
    (["scaling", "count", "--vocab-size", "0"], "argument --vocab-size: must be an integer >= 1"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_a_bad_flag_is_one_line_exit_2_and_nothing_is_written(files, capsys, argv, message):
    before = sorted(os.listdir(files))
    code = main([a.format(d=files) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message.format(d=files) in err, err
    assert sorted(os.listdir(files)) == before


def test_help_and_version_exit_0(capsys):
    assert main(["train", "--help"]) == 0
    assert "resuming (--resume)" in capsys.readouterr().out          # the resume rules are in the help
    assert main(["--version"]) == 0


def test_set_num_threads_clamps_and_refuses_nonsense():
    before = minillm.get_num_threads()
    try:
        with pytest.warns(RuntimeWarning, match="more than 4 x the"):
            minillm.set_num_threads(10 ** 6)
        if minillm.kernels.native.AVAILABLE:
            assert minillm.get_num_threads() == max_threads()
        with pytest.raises(ValueError, match="n must be >= 1"):
            minillm.set_num_threads(0)
    finally:
        minillm.set_num_threads(before)


@pytest.mark.skipif(not minillm.kernels.native.AVAILABLE, reason="the native extension (OpenMP) is not built")
def test_an_absurd_omp_num_threads_is_clamped_not_a_crash():
    """1,000,000 OpenMP threads crash libgomp (it overflows its stack making the team): minillm
    clamps the variable before the extension loads."""
    code = ("import numpy as np, minillm, minillm.kernels as k; x = np.ones((256, 256), np.float32); "
            "k.matmul(x, x); print(minillm.get_num_threads())")
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1000000"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(max_threads())] and "OMP_NUM_THREADS=1000000 is more than" in run.stderr
