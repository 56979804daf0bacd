"""`minillm finetune --method reward` (LoRA and --full): the log has loss and pair accuracy on train and
held-out pairs, the output loads with load_reward_model, --resume is bit-exact (the head included), bad
flags and data are one line with exit 2 and nothing written; `minillm generate --best-of N` prints the
sample the reward model scores highest."""
import json
import os

import numpy as np
import pytest

from minillm.alignment import tasks
from minillm.alignment.best_of_n import best_of_n, scored_rows
from minillm.alignment.reward_model import load_reward_model
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.models import DecoderLM, ModelConfig


@pytest.fixture
def run_files(tmp_path):
    tok = tasks.task_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, **{**tasks.MODEL, "n_embd": 16, "d_ff": 32})
    save_checkpoint(tmp_path / "base", DecoderLM(config, rng=np.random.default_rng(0)), tok, state={"step": 0})
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tasks.preference_records(40, 0)))
    return tmp_path


def reward_args(d, *extra):
    return ["finetune", "--method", "reward", "--model", str(d / "base"), "--data", str(d / "prefs.jsonl"),
            "--out", str(d / "rm"), "--max-iters", "4", "--eval-interval", "2", "--batch-size", "4", "--lr", "0.01",
            "--eval-fraction", "0.25", "--no-progress", *extra]


def log_of(out):
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("full", [False, True])
def test_a_reward_run_logs_accuracy_and_loads_with_load_reward_model(run_files, full):
    assert main(reward_args(run_files, *(["--full"] if full else []), "--margin", "0.5")) == 0
    log = log_of(run_files / "rm")
    steps, evals = [r for r in log if not r.get("eval")], [r for r in log if r.get("eval")]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["loss"]) for r in steps)
    assert all(0 <= r["eval_accuracy"] <= 1 and np.isfinite(r["val"]) for r in evals)
    model, tok = load_reward_model(run_files / "rm")
    same, _ = load_reward_model(run_files / "rm" / "reward_model")
    ids, mask = scored_rows(tok.encode("abc="), [tok.encode("cba"), tok.encode("abc")], [0, 0])
    np.testing.assert_array_equal(model.score(ids, mask), same.score(ids, mask))
    if full:                                                    # every weight trained: the base moved
        base = load_reward_model(run_files / "rm")[0].base.state_dict()
        from minillm.pretrained import load_pretrained
        start = load_pretrained(str(run_files / "base"))[0].state_dict()
        assert not np.array_equal(base["blocks.0.attn.wq.weight"], start["blocks.0.attn.wq.weight"])


@pytest.mark.parametrize("full", [False, True])
def test_a_resumed_reward_run_is_bit_exact(run_files, full):
    from minillm.alignment.train import PreferenceConfig
    from minillm.alignment.reward_train import RewardTrainer
    config = PreferenceConfig(objective="reward", method="full" if full else "lora", lora_r=2, target_modules="all-linear",
                              lr=1e-2, batch_size=4, eval_interval=3, max_iters=6, margin=0.2, lora_dropout=0.1)
    data = str(run_files / "prefs.jsonl")
    RewardTrainer(str(run_files / "base"), data, str(run_files / "a"), config, progress=False).run()
    interrupted = RewardTrainer(str(run_files / "base"), data, str(run_files / "b"), config, progress=False)
    step = interrupted.train_step

    def killed_after_the_checkpoint_of_step_3():
        if interrupted.step == 4:
            raise KeyboardInterrupt
        return step()
    interrupted.train_step = killed_after_the_checkpoint_of_step_3
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = RewardTrainer(str(run_files / "base"), data, str(run_files / "b"), config, resume=True, progress=False)
    assert resumed.step == 3
    resumed.run()
    a, b = (load_reward_model(run_files / d)[0].state_dict() for d in "ab")
    assert a.keys() == b.keys() and "reward_head.weight" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    key = lambda r: {k: v for k, v in r.items() if k != "tokens_per_s"}
    assert [key(r) for r in log_of(run_files / "b")] == [key(r) for r in log_of(run_files / "a")]


@pytest.mark.parametrize("extra, message", [
    (["--beta", "0.2"], "--beta goes with --method dpo"),
    (["--loss", "ipo"], "--loss goes with --method dpo"),
    (["--pack"], "--pack is for SFT examples"),
    (["--merge"], "always saved with its adapters merged"),
    (["--margin", "-1"], "argument --margin: must be a finite number >= 0"),
])
def test_bad_reward_flags_are_one_line_and_nothing_is_written(run_files, capsys, extra, message):
    assert main(reward_args(run_files, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(run_files / "rm")


def test_a_run_resumes_only_as_what_it_is(run_files, capsys):
    assert main(reward_args(run_files)) == 0
    dpo = [a if a != "reward" else "dpo" for a in reward_args(run_files)]
    sft = [a if a != "reward" else "lora" for a in reward_args(run_files)]
    for args, kind in ((dpo, "dpo"), (sft, "SFT")):
        capsys.readouterr()
        assert main(args + ["--resume", "--max-iters", "6"]) == 2
        assert f"is a reward run, not {kind}" in capsys.readouterr().err


def test_full_and_margin_are_refused_for_sft_and_dpo(run_files, capsys):
    sft = ["finetune", "--model", str(run_files / "base"), "--data", str(run_files / "prefs.jsonl"), "--out",
           str(run_files / "x"), "--no-progress"]
    assert main(sft + ["--full"]) == 2 and "--full goes with --method reward or dpo" in capsys.readouterr().err
    assert main(sft + ["--method", "dpo", "--margin", "1"]) == 2
    assert "--margin goes with --method reward" in capsys.readouterr().err
    assert not os.path.exists(run_files / "x")


def test_a_bad_pair_names_its_line_and_nothing_is_written(run_files, capsys):
    with open(run_files / "prefs.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "abc=", "chosen": "cba\n", "rejected": "cba\n"}) + "\n")
    assert main(reward_args(run_files)) == 2
    assert f"prefs.jsonl:41: 'chosen' and 'rejected' are the same reply" in capsys.readouterr().err
    assert not os.path.exists(run_files / "rm")


def test_best_of_n_prints_the_highest_scoring_sample(run_files, capsys):
    assert main(reward_args(run_files)) == 0
    rm, tok = load_reward_model(run_files / "rm")
    from minillm.pretrained import load_pretrained
    policy, _ = load_pretrained(str(run_files / "base"))
    prompt = tok.encode("abc=")
    best, ranked = best_of_n(policy, rm, prompt, 8, max_new_tokens=4, stop_tokens=[tok.encode("\n")[0]], seed=3)
    alone = [rm.score(*scored_rows(prompt, [reply], [0 if len(reply) < 4 else None]))[0] for _, reply in ranked]
    np.testing.assert_allclose([r for r, _ in ranked], alone, rtol=1e-5, atol=1e-6)
    assert best == ranked[0][1] and alone[0] >= max(alone) - 1e-5 and len({tuple(r) for _, r in ranked}) > 1
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(run_files / "base"), "--prompt", "abc=", "--best-of", "8", "--reward-model",
                 str(run_files / "rm"), "--stop", "\n", "--max-new-tokens", "4", "--seed", "3", "--temperature", "1"]) == 0
    out = capsys.readouterr()
    assert out.out == "abc=" + tok.decode(best) + "\n" and "best of 8" in out.err
    assert main(["generate", "--ckpt", str(run_files / "base"), "--best-of", "2"]) == 2
