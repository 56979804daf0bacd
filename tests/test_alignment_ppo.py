"""RLHF with PPO and GRPO: rollouts laid out and scored as a full forward of each (prompt, answer) says;
LoRA layers in the inference path equal forward, and adapters_disabled gives the base; the per-token
rewards; a tiny PPO run and a tiny GRPO run on the reverse-a-word task raise the rate of answers a
program checker accepts; the policy starts at the reference (KL 0); CLI errors are one line, exit 2."""
import json

import numpy as np
import pytest

from minillm.alignment.ppo import PPOConfig, PPOTrainer
from minillm.alignment.prompts import Prompt, load_prompts
from minillm.alignment.rollout import Rollout, layout, make_rollout, policy_forward
from minillm.alignment.tasks import rule_rate, satisfies, sft_starting_point, task_prompts, task_tokenizer
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.generate import generate
from minillm.lora import LoraConfig, apply_lora, adapters_disabled
from minillm.models import DecoderLM, ModelConfig
from minillm.nn import Linear
from minillm.sft_data import SFTDataError

LLAMA = dict(block_size=24, n_layer=2, n_head=2, n_embd=16, d_ff=32, norm="rmsnorm", activation="swiglu",
             positions="rope", bias=False)


def adapted(seed=0, targets=None, **overrides):
    """A tiny model and the same model with LoRA adapters whose B is not zero (so they matter)."""
    config = ModelConfig(vocab_size=13, **{**LLAMA, **overrides})
    base, model = (DecoderLM(config, rng=np.random.default_rng(seed)) for _ in range(2))
    apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets), rng=np.random.default_rng(1))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = (np.random.default_rng(2).standard_normal(p.shape) * 0.5).astype(p.dtype)
    return base, model


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("targets, gpt2", [(None, False), ("all-linear", False), ("all-linear", True)])
def test_lora_layers_infer_as_forward_and_adapters_disabled_give_the_base(targets, gpt2):
    overrides = dict(norm="layernorm", activation="gelu", positions="learned", bias=True) if gpt2 else {}
    base, model = adapted(targets=targets, **overrides)
    ids = np.random.default_rng(3).integers(0, 13, size=(2, 7))
    np.testing.assert_allclose(model.infer(ids), model(ids).data, rtol=1e-5, atol=1e-5)
    assert np.abs(model.infer(ids) - base.infer(ids)).max() > 1e-2            # the adapters change the output
    with adapters_disabled(model):
        np.testing.assert_array_equal(model(ids).data, base(ids).data)
        np.testing.assert_array_equal(model.infer(ids), base.infer(ids))
    np.testing.assert_allclose(model.infer(ids), model(ids).data, rtol=1e-5, atol=1e-5)   # back on afterwards


def test_rollouts_equal_a_full_forward_of_each_answer():
    base, model = adapted()
    head = Linear(16, 1, init_std=0.5, rng=np.random.default_rng(4))
    prompts = [Prompt("", "", ids, f"x:{i}") for i, ids in enumerate([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]])]
    stop = (12,)

    def reference(ids, targets):
        return policy_forward(base, None, ids, targets, 0.7)[0].data

    seen = []
    rollout = make_rollout(model, head, reference, prompts, lambda ps, answers: seen.append(answers) or
                           np.arange(len(ps), dtype=float), max_new_tokens=6, temperature=0.7, seed=5, stop=stop)
    expected = generate(model, [p.ids for p in prompts], 6, temperature=0.7, seed=5)
    assert seen == [rollout.answers]
    for b, (p, answer) in enumerate(zip(prompts, rollout.answers)):
        cut = next((i for i, t in enumerate(expected[b]) if t in stop), None)
        assert answer == (expected[b] if cut is None else expected[b][:cut + 1])       # kept through the stop
        full = np.array([p.ids + answer])
        n, L = len(answer), len(p.ids)
        assert rollout.mask[b].sum() == n and rollout.mask[b, L - 1:L - 1 + n].all()
        np.testing.assert_array_equal(rollout.ids[b, :L + n], full[0])
        for name, net in (("logp", model), ("ref_logp", base)):
            lp = log_softmax(net(full).data[0].astype(np.float64) / 0.7)            # (T, V)
            np.testing.assert_allclose(getattr(rollout, name)[b, L - 1:L - 1 + n], lp[np.arange(L - 1, L - 1 + n), answer],
                                       rtol=1e-4, atol=1e-5)
        values = head(model.hidden_states(full)).data[0, :, 0]
        np.testing.assert_allclose(rollout.values[b, L - 1:L - 1 + n], values[L - 1:L - 1 + n], rtol=1e-4, atol=1e-5)
    assert np.all(rollout.values[~rollout.mask] == 0) and np.all(rollout.logp[~rollout.mask] == 0)
    np.testing.assert_array_equal(rollout.scores, [0, 1, 2])


def test_rewards_put_the_kl_penalty_on_every_action_and_the_score_on_the_last():
    ids, targets, mask = layout([[1, 2], [3]], [[4, 5, 6], [7]])
    np.testing.assert_array_equal(mask, [[False, True, True, True, False], [True, False, False, False, False]])
    np.testing.assert_array_equal(targets, [[-100, 4, 5, 6, -100], [7, -100, -100, -100, -100]])
    np.testing.assert_array_equal(ids, [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]])
    logp, ref = np.where(mask, -1.0, 0.0), np.where(mask, -1.5, 0.0)
    rollout = Rollout(ids, targets, mask, logp, ref, np.zeros(ids.shape), np.array([2.0, -1.0]), [[4, 5, 6], [7]])
    np.testing.assert_allclose(rollout.rewards(0.1), [[0, -0.05, -0.05, 1.95, 0], [-1.05, 0, 0, 0, 0]])
    np.testing.assert_allclose(rollout.kl(), [1.5, 0.5])


# ---- the task runs

@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The reverse-a-word task's SFT starting point (a short, cruder one), saved, and a prompt file."""
    d = tmp_path_factory.mktemp("task")
    tok = task_tokenizer()
    save_checkpoint(d / "base", sft_starting_point(tok, seed=0, steps=300), tok, state={"step": 0})
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in task_prompts(100, seed=0)))
    return d


def rule_reward(prompts, answers):
    return [float(satisfies(p.text, a)) for p, a in zip(prompts, answers)]


def run_task(task, out, algorithm, steps, prompts=None, base="base", reward=rule_reward, **overrides):
    config = PPOConfig(**{**dict(method="full", algorithm=algorithm, lr=3e-4 if algorithm == "ppo" else 1e-3,
                                 max_iters=steps, eval_interval=steps, rollouts=32, group_size=4, max_new_tokens=5,
                                 stop="\n", kl_coef=0.02, eval_fraction=0.0), **overrides})
    run = PPOTrainer(str(task / base), str(prompts or task / "prompts.jsonl"), str(out), config, reward, progress=False,
                     log=lambda *a: None)
    run.run()
    return run, [json.loads(line) for line in open(out / "train_log.jsonl")]


@pytest.mark.parametrize("algorithm, steps", [("ppo", 40), ("grpo", 40)])
def test_a_tiny_run_raises_the_rate_of_answers_the_checker_accepts(task, tmp_path, algorithm, steps):
    tok, prompts = task_tokenizer(), task_prompts(60, seed=1)
    from minillm.pretrained import load_pretrained
    before = rule_rate(load_pretrained(str(task / "base"))[0], tok, prompts, samples=4, seed=0)
    run, log = run_task(task, tmp_path / algorithm, algorithm, steps)
    after = rule_rate(run.model.eval(), tok, prompts, samples=4, seed=0)
    assert log[0]["kl"] == 0.0                                   # the policy starts as the reference
    assert {"reward", "kl", "kl_coef", "policy_loss", "clip_fraction", "entropy"} <= set(log[0])
    assert ("value_loss" in log[0]) == (algorithm == "ppo")
    assert after > before + 0.15, (before, after)
    assert np.mean([r["reward"] for r in log[-10:]]) > np.mean([r["reward"] for r in log[:10]]) + 0.1


def test_a_lora_run_starts_at_the_base_and_writes_a_loadable_adapter(task, tmp_path):
    tok = task_tokenizer()                           # a layout peft has no name for: refused before any write
    odd = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **{**LLAMA, "block_size": 16, "activation": "gelu"}),
                    rng=np.random.default_rng(0))
    save_checkpoint(tmp_path / "odd", odd, tok, state={"step": 0})
    with pytest.raises(ValueError, match="neither Llama"):
        run_task(tmp_path, tmp_path / "refused", "ppo", 2, method="lora", prompts=task / "prompts.jsonl", base="odd")
    assert not (tmp_path / "refused").exists()
    run, log = run_task(task, tmp_path / "lora", "ppo", 2, method="lora", lr=1e-2, rollouts=8,
                        target_modules="all-linear")
    assert log[0]["kl"] == 0.0 and log[1]["kl"] != 0.0
    from minillm.pretrained import load_pretrained
    loaded, _ = load_pretrained(str(tmp_path / "lora"))
    ids = np.array([task_tokenizer().encode("abc=")])
    np.testing.assert_allclose(loaded.infer(ids), run.model.infer(ids), rtol=1e-5, atol=1e-6)


def test_adaptive_kl_raises_beta_while_the_kl_passes_the_target(task, tmp_path):
    _, log = run_task(task, tmp_path / "adaptive", "ppo", 4, lr=1e-3, rollouts=8, target_kl=1e-3, kl_horizon=100)
    betas = [r["kl_coef"] for r in log]
    assert betas[0] == 0.02 and all(b2 >= b1 for b1, b2 in zip(betas[1:], betas[2:])) and betas[-1] > 0.02


# ---- data and CLI errors

def test_prompt_files_are_checked_line_by_line(tmp_path):
    tok = task_tokenizer()
    path = tmp_path / "p.jsonl"
    for line, message in [('{"prompt": "abc="}\n{"completion": "x"}', "p.jsonl:2: a record needs a non-empty"),
                          ('{"prompt": "abc="}\nnot json', "p.jsonl:2: not valid JSON"),
                          ('{"prompt": "abcabcabcabcabc="}', "p.jsonl:1: the prompt is 16 tokens"),
                          ('{"messages": [{"role": "user", "content": "ab"}]}', "needs a chat template")]:
        path.write_text(line + "\n")
        with pytest.raises(SFTDataError, match=message):      # PromptDataError is one
            load_prompts(str(path), tok, 16, 5)
    path.write_text('{"prompt": "abc="}\n\n{"prompt": "fed="}\n')
    assert [p.ids for p in load_prompts(str(path), tok, 16, 5)] == [tok.encode("abc="), tok.encode("fed=")]


def test_cli_errors_are_one_line_exit_2_and_write_nothing(task, reward_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "abc="}\n{"prompt": 3}\n')
    common = ["finetune", "--model", str(task / "base"), "--out", str(tmp_path / "out"), "--no-progress"]
    rm = ["--reward-model", str(reward_model_dir), "--max-new-tokens", "5"]
    cases = [
        (["--method", "ppo", "--data", str(task / "prompts.jsonl")], "--method ppo needs --reward-model DIR"),
        (["--method", "grpo", "--data", str(task / "prompts.jsonl"), "--rollouts", "6", "--group-size", "4"] + rm,
         "rollouts (6) must be a multiple of group_size (4)"),
        (["--method", "ppo", "--data", str(task / "prompts.jsonl"), "--group-size", "4"] + rm, "--group-size is for"),
        (["--method", "lora", "--data", str(task / "prompts.jsonl"), "--kl-coef", "0.1"], "--kl-coef is for --method"),
        (["--method", "ppo", "--data", str(task / "prompts.jsonl"), "--gamma", "1.5"] + rm, "argument --gamma"),
        (["--method", "ppo", "--data", str(bad)] + rm, "bad.jsonl:2: a record needs a non-empty"),
        (["--method", "grpo", "--data", str(task / "prompts.jsonl"), "--pack"] + rm, "--pack is for SFT examples"),
        (["--method", "ppo", "--data", str(bad), "--max-new-tokens", "13"] + rm[:2], "bad.jsonl:1: the prompt is 4 tokens"),
        (["--method", "ppo", "--data", str(task / "prompts.jsonl"), "--resume"] + rm, "--resume: no checkpoint in"),
    ]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny reward model (alignment/reward_model.py) trained a few Bradley-Terry steps on the task, saved."""
    from minillm.alignment.preference_data import encode_pair, pair_batch
    from minillm.alignment.reward_model import RewardModel, bradley_terry_loss, pair_rewards, save_reward_model
    from minillm.alignment.tasks import MODEL, preference_records
    from minillm.optim import AdamW, param_groups
    tok = task_tokenizer()
    rm = RewardModel(DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **{**MODEL, "n_embd": 16, "d_ff": 32}),
                               rng=np.random.default_rng(0)))
    batch = pair_batch([encode_pair(r, tok, "x") for r in preference_records(16, seed=0)])
    optimizer = AdamW(param_groups(rm, 0.0), 3e-3)
    for _ in range(20):
        bradley_terry_loss(*pair_rewards(rm, batch)).backward()
        optimizer.step()
        optimizer.zero_grad()
    d = tmp_path_factory.mktemp("rm") / "rm"
    save_reward_model(rm, tok, str(d))
    return d


def test_the_reward_model_reward_scores_prompt_and_answer_with_its_stop_token(reward_model_dir):
    from minillm.alignment.ppo import reward_model_reward
    from minillm.alignment.reward_model import load_reward_model
    rm, tok = load_reward_model(str(reward_model_dir))
    prompts = [Prompt("abc=", "abc=", tok.encode("abc="), "x:1"), Prompt("fe=", "fe=", tok.encode("fe="), "x:2")]
    scores = reward_model_reward(rm, tok)(prompts, ["cba\n", "ef\n"])
    np.testing.assert_allclose(scores[0], rm.score(np.array([tok.encode("abc=cba\n")]), np.ones((1, 8), bool))[0])
    np.testing.assert_allclose(scores[1], rm.score(np.array([tok.encode("fe=ef\n")]), np.ones((1, 6), bool))[0])


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_the_cli_runs_against_a_reward_model_and_the_output_loads(task, reward_model_dir, tmp_path, method, capsys):
    from minillm.pretrained import load_pretrained
    out = tmp_path / "out"
    args = ["finetune", "--method", method, "--tuning", "full", "--model", str(task / "base"), "--data",
            str(task / "prompts.jsonl"), "--reward-model", str(reward_model_dir), "--out", str(out), "--max-iters", "2",
            "--rollouts", "8", "--max-new-tokens", "5", "--stop", "\n", "--missing-stop-penalty", "1", "--no-progress"]
    assert main(args + (["--group-size", "4"] if method == "grpo" else [])) == 0
    assert "done: step 2" in capsys.readouterr().out
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["reward"]) for r in log)
    assert json.loads((out / "finetune.json").read_text())["method"] == "full"
    model, _ = load_pretrained(str(out))
    assert model.config.vocab_size == task_tokenizer().vocab_size
    assert main(args) == 2                                        # a second run into it needs --resume or --overwrite
    assert "already holds a checkpoint" in capsys.readouterr().err
    grpo = ["--group-size", "4"] if method == "grpo" else []
    assert main([a if a != "2" else "3" for a in args] + grpo + ["--resume"]) == 0      # --max-iters 3
    assert [json.loads(line)["step"] for line in open(out / "train_log.jsonl")] == [1, 2, 3]
    capsys.readouterr()
    assert main(args[:args.index("--reward-model") + 1] + [str(task / "base")] + args[args.index("--reward-model") + 2:]
                + ["--overwrite"] + (["--group-size", "4"] if method == "grpo" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert "not a reward model" in err and len(err.splitlines()) == 1


def test_the_missing_stop_penalty_falls_on_answers_that_never_stopped(task, tmp_path):
    seen = {}

    def zero(prompts, answers):
        seen["answers"] = answers
        return [0.0] * len(answers)

    config = PPOConfig(method="full", algorithm="ppo", max_iters=1, rollouts=32, max_new_tokens=4, stop="\n",
                       missing_stop_penalty=1.5, eval_fraction=0.0, temperature=2.0)
    run = PPOTrainer(str(task / "base"), str(task / "prompts.jsonl"), str(tmp_path / "o"), config, zero, progress=False)
    rollout = run.rollout()
    stopped = np.array([a[-1] == task_tokenizer().encode("\n")[0] for a in rollout.answers])
    assert 0 < stopped.sum() < len(stopped)                       # both kinds in the batch
    np.testing.assert_array_equal(rollout.scores, np.where(stopped, 0.0, -1.5))
    assert not any("\n" in a for a in seen["answers"])            # a program reward reads the text alone
    zero.scores_full_text = True                                  # a reward model reads it with its stop token
    rollout = run.rollout()
    assert seen["answers"] == [task_tokenizer().decode(a) for a in rollout.answers]
    assert any(a.endswith("\n") for a in seen["answers"])


@pytest.mark.parametrize("method, algorithm", [("lora", "ppo"), ("full", "ppo"), ("full", "grpo")])
def test_resume_is_bit_exact(task, tmp_path, method, algorithm):
    overrides = dict(method=method, rollouts=8, lr=1e-3, target_kl=0.5, kl_horizon=100, eval_interval=2,
                     target_modules="all-linear")
    straight, log = run_task(task, tmp_path / "straight", algorithm, 4, **overrides)
    run_task(task, tmp_path / "resumed", algorithm, 2, **overrides)
    config = PPOConfig(**{**dict(method=method, algorithm=algorithm, max_iters=4)})     # the rest from the checkpoint
    resumed = PPOTrainer(str(task / "base"), str(task / "prompts.jsonl"), str(tmp_path / "resumed"), config,
                         rule_reward, progress=False, log=lambda *a: None, resume=True)
    assert resumed.step == 2 and resumed.config.rollouts == 8 and resumed.kl_control.value != 0.02
    resumed.run()
    again = [json.loads(line) for line in open(tmp_path / "resumed" / "train_log.jsonl")]
    drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]   # noqa: E731
    assert drop(again) == drop(log)
    for (name, a), (_, b) in zip(straight.optimizer.named_parameters(), resumed.optimizer.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_a_qlora_run_starts_at_its_quantized_base_and_loads(task, tmp_path):
    from minillm.pretrained import load_pretrained
    run, log = run_task(task, tmp_path / "qlora", "ppo", 2, method="qlora", scheme="q8_0", lr=1e-2, rollouts=8,
                        reward=lambda prompts, answers: [a.count("a") for a in answers])
    assert run.model.quantization is not None and run.reference_model is None
    assert log[0]["kl"] == 0.0 and log[1]["kl"] != 0.0
    loaded, _ = load_pretrained(str(tmp_path / "qlora"))
    ids = np.array([task_tokenizer().encode("abc=")])
    np.testing.assert_allclose(loaded.infer(ids), run.model.infer(ids), rtol=1e-5, atol=1e-5)
