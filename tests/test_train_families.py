"""`minillm train` for the encoder families, end to end and short: BERT with MLM on a small text
(trains, evaluates masked-token accuracy, resumes), a T5-style model on a generated task (its loss
falls and it learns a short version of the task: sorting up to 3 digits, >= 99% exact match),
generation with beams, span corruption, and the errors for what the families cannot do."""
import json

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.mlm import IGNORE

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
        "arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. ") * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bert_trains_with_mlm_evaluates_and_resumes(tmp_path, corpus, capsys):
    out = str(tmp_path / "bert")
    common = ["--preset", "bert-shakespeare", "--data", corpus, "--out", out, "--tokenizer-vocab-size", "120",
              "--batch-size", "4", "--eval-iters", "2", "--no-progress"]
    code, stdout, err = run(capsys, "train", *common, "--max-iters", "4", "--eval-interval", "4", "--sample-tokens", "5")
    assert code == 0, err
    assert "encoder" in err and "masked token -> prediction: " in stdout
    saved = ckpt.load_checkpoint(out)
    assert saved["config"]["model"]["family"] == "encoder"
    code, stdout, _ = run(capsys, "eval", "--ckpt", out, "--data", corpus, "--no-progress")
    result = json.loads(stdout)
    assert code == 0 and result["masked_tokens"] > 0 and 0 <= result["masked_accuracy"] <= 1
    assert result["loss"] > 0
    code, _, err = run(capsys, "train", "--data", corpus, "--out", out, "--no-progress", "--max-iters", "6", "--resume")
    assert code == 0, err
    assert ckpt.load_checkpoint(out)["state"]["step"] == 6
    code, _, err = run(capsys, "generate", "--ckpt", out, "--prompt", "to be")
    assert code == 2 and "encoder-only" in err
    code, stdout, err = run(capsys, "embed", "--model", out, "--text", "to be", "--text", "or not", "--similarity")
    assert code == 0, err
    matrix = [json.loads(line) for line in stdout.splitlines()]
    assert np.allclose(np.diag(matrix), 1.0, atol=1e-6)


def test_mlm_batches_mask_only_the_window_and_frame_it(tmp_path, corpus):
    from minillm.data import encode
    from minillm.mlm import MLMData
    from minillm.tokenizers import WordPieceTokenizer
    tok = WordPieceTokenizer.train(TEXT, 120)
    data = MLMData(encode(tok, TEXT), tok)
    x, y = data.get_batch("train", 3, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (3, 16)
    assert (x[:, 0] == tok.special_tokens["[CLS]"]).all() and (x[:, -1] == tok.special_tokens["[SEP]"]).all()
    assert ((y != IGNORE).sum(axis=1) == 2).all()                          # round(0.15 * 14)
    part, _ = data.get_batch("train", 3, 16, np.random.default_rng(0), rows=slice(1, 2))
    np.testing.assert_array_equal(part, x[1:2])                            # a rank's rows of the same batch


def test_t5_learns_a_small_sort_task_and_generates_with_beams(tmp_path, capsys):
    config = tmp_path / "t5.json"
    config.write_text(json.dumps({
        "model": {"family": "encoder_decoder", "vocab_size": None, "block_size": 8, "n_layer": 1, "n_head": 2,
                  "n_embd": 32, "d_ff": 64, "num_buckets": 8, "max_distance": 16},
        "train": {"task": "sort", "task_max_len": 3, "batch_size": 32, "max_iters": 700, "lr": 4e-3, "min_lr": 4e-4,
                  "warmup_iters": 20, "lr_decay_iters": 700, "eval_interval": 700, "eval_iters": 2,
                  "sample_tokens": 6, "weight_decay": 0.0}}))
    out = str(tmp_path / "t5")
    code, stdout, err = run(capsys, "train", "--config", str(config), "--out", out, "--no-progress")
    assert code == 0, err
    samples = stdout.split("--- sample ---\n")[1].splitlines()       # 'source' -> 'output' (expected 'answer')
    assert len(samples) == 4 and all(" -> " in line and "(expected " in line and "</s>" not in line
                                     for line in samples), samples
    log = [json.loads(line) for line in open(f"{out}/train_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    code, stdout, err = run(capsys, "eval", "--ckpt", out, "--examples", "300")
    result = json.loads(stdout)                 # the t5-sort preset (up to 12 digits) is docs/encoders.md's
    assert code == 0 and result["task"] == "sort" and result["exact_match"] >= 0.99, result
    code, stdout, err = run(capsys, "generate", "--ckpt", out, "--prompt", "312", "--num-beams", "3",
                            "--max-new-tokens", "6")
    assert code == 0 and stdout.strip() == "123", (stdout, err)


def test_span_corruption_trains_a_denoiser_on_text(tmp_path, corpus, capsys):
    config = tmp_path / "span.json"
    config.write_text(json.dumps({
        "model": {"family": "encoder_decoder", "vocab_size": None, "block_size": 24, "n_layer": 1, "n_head": 2,
                  "n_embd": 16, "d_ff": 32, "num_buckets": 8, "max_distance": 16},
        "train": {"task": "span_corruption", "tokenizer": "char", "batch_size": 4, "max_iters": 3, "eval_interval": 3,
                  "eval_iters": 1, "sample_tokens": 0}}))
    out = str(tmp_path / "span")
    code, _, err = run(capsys, "train", "--config", str(config), "--data", corpus, "--out", out, "--no-progress")
    assert code == 0, err
    model, tok = ckpt.build_model(ckpt.load_checkpoint(out))
    assert "<extra_id_0>" in tok.special_tokens and model.config.family == "encoder_decoder"
    code, _, err = run(capsys, "eval", "--ckpt", out)
    assert code == 2 and "no exact answers" in err


def test_a_task_the_family_does_not_know_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"model": {"family": "encoder_decoder", "vocab_size": None},
                                  "train": {"task": "translate"}}))
    code, _, err = run(capsys, "train", "--config", str(config), "--out", str(tmp_path / "x"), "--no-progress")
    assert code == 2 and "train.task must be one of" in err


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
def test_a_model_too_big_for_the_memory_is_refused_before_it_is_built(tmp_path, capsys, family):
    config = tmp_path / "huge.json"
    config.write_text(json.dumps({"model": {"family": family, "vocab_size": None, "n_layer": 10 ** 9, "n_embd": 64,
                                            "n_head": 2},
                                  "train": {"task": "sort"} if family == "encoder_decoder" else {}}))
    out = tmp_path / "huge"
    code, _, err = run(capsys, "train", "--config", str(config), "--out", str(out), "--no-progress")
    assert code == 2 and "parameters" in err and "more than this machine's" in err, err
    assert not out.exists() or not any(out.iterdir())
