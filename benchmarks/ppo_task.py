"""PPO and GRPO on the reverse-a-word task (minillm/alignment/tasks.py): the rate at which the policy's
sampled answers satisfy the task's rule (the checker satisfies()), before and after, on held-out prompts.

    python benchmarks/ppo_task.py [--steps 100] [--out benchmarks/results/ppo.json]

Three runs from the same tiny SFT starting point (tasks.sft_starting_point, ~1/3 of its samples right),
each `minillm finetune`'s own loop (PPOTrainer) on a prompt file it writes, full fine-tuning unless
LoRA is named:
  ppo-program   PPO, the reward the checker itself (1 if the answer is the reversal, else 0)
  grpo-program  GRPO, the same reward
  ppo-lora-program  PPO with LoRA adapters (r 8, alpha 16, all-linear), the reference the base with them off
  ppo-reward-model  PPO against a reward model (alignment/reward_model.py) trained here in-process with
                the Bradley-Terry loss on tasks.preference_records: RLHF proper; the checker only measures
                (and the missing-stop penalty on, as a reward model needs)
The rule rate is measured at steps 10, 25, 50 and the last (the curve shows reward over-optimisation
when the reward is a model).
Rates are counts (load-independent); the wall times are on whatever machine runs it.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minillm.alignment import tasks  # noqa: E402
from minillm.alignment.ppo import PPOConfig, PPOTrainer, reward_model_reward  # noqa: E402
from minillm.alignment.preference_data import encode_pair, pair_batch  # noqa: E402
from minillm.alignment.reward_model import (RewardModel, bradley_terry_loss, pair_rewards,  # noqa: E402
                                            reward_accuracy)
from minillm.checkpoint import save_checkpoint  # noqa: E402
from minillm.models import DecoderLM, ModelConfig  # noqa: E402
from minillm.optim import AdamW, param_groups  # noqa: E402


def train_reward_model(tok, steps, seed=0, batch_size=32, lr=3e-3):
    """A RewardModel on a fresh tiny decoder (tasks.MODEL), Bradley-Terry on preference_records."""
    base = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **tasks.MODEL), rng=np.random.default_rng([seed, 11]))
    rm = RewardModel(base, rng=np.random.default_rng([seed, 12]))
    pairs = [encode_pair(r, tok, "preference_records") for r in tasks.preference_records(2000, seed)]
    optimizer, rng = AdamW(param_groups(rm, 0.0), lr), np.random.default_rng([seed, 13])
    rm.train()
    for _ in range(steps):
        batch = pair_batch([pairs[i] for i in rng.choice(len(pairs), batch_size, replace=False)])
        loss = bradley_terry_loss(*pair_rewards(rm, batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    held = pair_batch([encode_pair(r, tok, "heldout") for r in tasks.preference_records(200, seed + 1, "heldout")])
    rm.eval()
    return rm, reward_accuracy(*pair_rewards(rm, held))


def rule_reward(prompts, answers):
    return [float(tasks.satisfies(p.text, a)) for p, a in zip(prompts, answers)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--rm-steps", type=int, default=300)
    p.add_argument("--eval-prompts", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ppo.json"))
    args = p.parse_args()
    tok = tasks.task_tokenizer()
    work = tempfile.mkdtemp(prefix="ppo-task-")
    t0 = time.perf_counter()
    sft = tasks.sft_starting_point(tok, seed=0)
    sft_seconds = time.perf_counter() - t0
    save_checkpoint(os.path.join(work, "sft"), sft, tok, state={"step": 0})
    prompt_file = os.path.join(work, "prompts.jsonl")
    with open(prompt_file, "w") as f:
        f.writelines(json.dumps({"prompt": q}) + "\n" for q in tasks.task_prompts(400, seed=0))
    held = tasks.task_prompts(args.eval_prompts, seed=1, split="heldout")
    rate = lambda model: tasks.rule_rate(model, tok, held, samples=args.samples, seed=0)   # noqa: E731
    report = {"task": "reverse-a-word (minillm/alignment/tasks.py)", "eval": f"{args.eval_prompts} held-out prompts x "
              f"{args.samples} samples at temperature 1", "sft_seconds": sft_seconds, "rule_rate_sft": rate(sft)}
    print(f"SFT starting point: rule rate {report['rule_rate_sft']:.3f} ({sft_seconds:.1f} s)", flush=True)
    t0 = time.perf_counter()
    rm, rm_accuracy = train_reward_model(tok, args.rm_steps)
    report["reward_model"] = {"steps": args.rm_steps, "heldout_pair_accuracy": rm_accuracy,
                              "seconds": time.perf_counter() - t0}
    print(f"reward model: held-out pair accuracy {rm_accuracy:.3f}", flush=True)
    runs = {"ppo-program": ("ppo", "full", 3e-4, 0.02, rule_reward),
            "grpo-program": ("grpo", "full", 1e-3, 0.02, rule_reward),
            "ppo-lora-program": ("ppo", "lora", 3e-3, 0.02, rule_reward),
            "ppo-reward-model": ("ppo", "full", 1e-4, 0.1, reward_model_reward(rm, tok))}
    marks = sorted({m for m in (10, 25, 50, args.steps) if m <= args.steps})
    for name, (algorithm, method, lr, kl_coef, reward) in runs.items():
        config = PPOConfig(method=method, target_modules="all-linear", lora_r=8, lora_alpha=16, algorithm=algorithm,
                           lr=lr, max_iters=args.steps, eval_interval=args.steps, rollouts=args.rollouts, group_size=4, max_new_tokens=tasks.WORD_LENGTH + 2,
                           stop=tasks.END, kl_coef=kl_coef, ppo_epochs=4, eval_fraction=0.0, seed=0,
                           missing_stop_penalty=5.0 if name == "ppo-reward-model" else None)
        run = PPOTrainer(os.path.join(work, "sft"), prompt_file, os.path.join(work, name), config, reward,
                         progress=False, log=lambda *a: None)
        log, curve, seconds = [], {}, 0.0
        while run.step < args.steps:                     # PPOTrainer.run's steps, with the rule rate measured
            t0 = time.perf_counter()                     # at the marks (outside the timed part)
            log.append(run.train_step())
            seconds += time.perf_counter() - t0
            if run.step in marks:
                curve[run.step] = rate(run.model.eval())
                run.model.train()
        report[name] = {"algorithm": algorithm, "tuning": method, "lr": lr, "kl_coef": kl_coef, "steps": run.step,
                        "rollouts_per_step": args.rollouts, "train_seconds": seconds,
                        "rule_rate_after": curve[args.steps], "rule_rate_at_step": curve,
                        "mean_reward_first_10_steps": float(np.mean([r["reward"] for r in log[:10]])),
                        "mean_reward_last_10_steps": float(np.mean([r["reward"] for r in log[-10:]])),
                        "kl_last_step": log[-1]["kl"]}
        print(f"{name}: rule rate {report['rule_rate_sft']:.3f} -> {curve} in {run.step} steps, {seconds:.1f} s; "
              f"mean reward {report[name]['mean_reward_first_10_steps']:.3f} -> "
              f"{report[name]['mean_reward_last_10_steps']:.3f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
