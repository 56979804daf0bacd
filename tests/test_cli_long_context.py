"""The long-context commands: `minillm train --resume --block-size 2x` (position interpolation: the
checkpoint's context doubled, RoPE scaled linearly, training continued at the new length) and
`minillm eval --by-position [--plot]`, `--passkey`, `--lost-in-the-middle`; and their bad flags."""
import json
import os

import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.context_extension import extended_model, parse_block_size
from minillm.models import ModelConfig

from minillm.long_eval import FILLER

TEXT = (FILLER + "The pass key is 12345. Remember it. 67890 is the pass key. What is the pass key? 1: 2\n3: 4\n") * 30
MODEL = dict(vocab_size=None, block_size=128, n_layer=1, n_head=2, n_embd=16, positions="rope", norm="rmsnorm",
             activation="swiglu", bias=False)
TRAIN = dict(batch_size=2, lr=3e-3, warmup_iters=1, eval_interval=2, eval_iters=1, sample_tokens=0, max_iters=2)


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run(tmp_path, capsys):
    data, config = tmp_path / "corpus.txt", tmp_path / "tiny.json"
    data.write_text(TEXT)
    config.write_text(json.dumps({"model": MODEL, "train": TRAIN}))
    out = tmp_path / "out"
    code, _, err = cli(capsys, "train", "--config", config, "--data", data, "--out", out, "--no-progress")
    assert code == 0, err
    return out, data, config


def test_resume_with_block_size_4x_interpolates_the_positions_and_trains_at_the_new_length(run, capsys):
    out, data, config = run
    code, _, err = cli(capsys, "train", "--config", config, "--data", data, "--out", out, "--resume",
                       "--block-size", "2x", "--max-iters", 4, "--no-progress")
    assert code == 0, err
    assert "context 128 -> 256" in err and "linear" in err
    saved = ckpt.read_checkpoint_meta(str(out))
    model = saved["config"]["model"]
    assert model["block_size"] == 256 and model["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert saved["state"]["step"] == 4
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    assert [r["step"] for r in log if not r.get("eval")] == [1, 2, 3, 4]


def test_block_size_flag_rules(run, capsys, tmp_path):
    out, data, config = run
    code, _, err = cli(capsys, "train", "--config", config, "--data", data, "--out", tmp_path / "new",
                       "--block-size", "4x")
    assert code == 2 and "needs --resume" in err
    code, _, err = cli(capsys, "train", "--config", config, "--data", data, "--out", out, "--resume",
                       "--block-size", "32")
    assert code == 2 and "shorter than the checkpoint's context 128" in err
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--block-size", "four")
    assert code == 2 and "must be a positive int or a factor" in err
    assert parse_block_size("4x") == ("times", 4.0) and parse_block_size("256") == ("tokens", 256)
    with pytest.raises(ValueError, match="learned positions"):
        extended_model(ModelConfig(positions="learned"), ("times", 2.0))
    twice = extended_model(ModelConfig(positions="rope", block_size=8, rope_scaling={"rope_type": "linear",
                                                                                       "factor": 2.0}), ("times", 2.0))
    assert twice == {"block_size": 16, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}


def test_eval_by_position_passkey_and_lost_in_the_middle(run, capsys):
    out, data, _ = run
    code, printed, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--split", "all", "--by-position",
                             "--buckets", 4, "--plot")
    assert code == 0, err
    rows = [json.loads(line) for line in printed.splitlines()]
    assert [(r["start"], r["end"]) for r in rows[:4]] == [(0, 32), (32, 64), (64, 96), (96, 128)]
    assert all(r["loss"] > 0 for r in rows[:4]) and os.path.exists(rows[4]["plot"])
    # beyond the context, with a scaling
    code, printed, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--split", "all", "--by-position",
                             "--buckets", 2, "--length", 256, "--rope-scaling", '{"rope_type": "dynamic", "factor": 2}')
    assert code == 0, err
    assert [json.loads(line)["end"] for line in printed.splitlines()] == [128, 256]
    code, printed, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--passkey", "--lengths", "110",
                             "--depths", "0,1", "--trials", 1)
    assert code == 0, err
    rows = [json.loads(line) for line in printed.splitlines()]
    assert [(r["length"], r["depth"]) for r in rows] == [(110, 0.0), (110, 1.0)]
    assert all(r["accuracy"] in (0.0, 1.0) for r in rows)
    code, printed, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--lost-in-the-middle", "--pairs", 2,
                             "--trials", 1)
    assert code == 0, err
    assert [json.loads(line)["position"] for line in printed.splitlines()] == [0, 1]
    code, _, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--passkey", "--lengths", "500")
    assert code == 2 and "do not fit the context" in err
    code, _, err = cli(capsys, "eval", "--ckpt", out, "--data", data, "--by-position", "--rope-scaling", "{bad")
    assert code == 2 and "not JSON" in err


def test_generate_with_sinks_runs_past_the_context(run, capsys):
    out, _, _ = run
    code, printed, err = cli(capsys, "generate", "--ckpt", out, "--prompt", "The pass", "--max-new-tokens", 300,
                             "--sinks", "4,60", "--seed", 0)
    assert code == 0, err
    assert printed.startswith("The pass") and len(printed.rstrip("\n")) == len("The pass") + 300   # context 128
    code, _, err = cli(capsys, "generate", "--ckpt", out, "--sinks", "4")
    assert code == 2 and "--sinks must be two ints" in err
    code, _, err = cli(capsys, "generate", "--ckpt", out, "--sinks", "64,64")
    assert code == 2 and "must be less than the context" in err


def test_loss_by_position_averages_to_the_eval_loss_and_passkey_prompts_place_the_needle():
    import numpy as np
    from minillm.long_eval import loss_by_position, passkey_prompt, with_context
    from minillm.models import DecoderLM
    from minillm.tokenizers import CharTokenizer
    from minillm.train import evaluate_split
    model = DecoderLM(ModelConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=8, positions="rope",
                                  init_std=0.3), rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 30, size=16 * 5 + 1)
    rows = loss_by_position(model, ids, buckets=4)
    assert np.mean([r["loss"] for r in rows]) == pytest.approx(evaluate_split(model, ids), abs=1e-3)
    longer = with_context(model, 32, {"rope_type": "linear", "factor": 2.0})
    assert longer.config.block_size == 32 and longer.config.rope_scaling["factor"] == 2.0
    assert len(loss_by_position(longer, np.tile(ids, 2), buckets=2)) == 2
    tok = CharTokenizer.train(TEXT)
    start, end = (tok.decode(passkey_prompt(tok, 200, depth, "12345")) for depth in (0.0, 1.0))
    assert start.startswith("The pass key is 12345.") and len(tok.encode(start)) == 200
    assert end.endswith("12345 is the pass key. What is the pass key? The pass key is ")
