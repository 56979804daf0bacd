"""The reward model, best-of-n and DPO measured on the reverse-a-word task (minillm/alignment/tasks.py):
counts, not speed, so a busy machine gives the same figures (wall times are reported but load-dependent).

    python benchmarks/alignment_task.py [--out /tmp/alignment-task] [--dpo-steps 50,100,200,400] [--betas 0.1,0.5]

1. the SFT starting point: a tiny decoder trained in-process to reverse the word ~40% of the time;
   the rule rate of its samples (temperature 1, fixed seeds) on held-out prompts
2. a reward model (`minillm finetune --method reward`'s trainer, LoRA) on the train split's pairs: its
   accuracy on held-out pairs (held-out prompts), and best-of-n with it (the rule rate of the pick)
3. DPO (`--method dpo`'s trainer, LoRA) from the starting point, one run per beta and step count: the rule
   rate after (and the shares of answers that copy the word or are neither), the held-out
   chosen-over-rejected log-probability margin, and trl's figures on the held-out pairs

Writes benchmarks/results/alignment.json (or --results).
"""
import argparse
import copy
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minillm.alignment import tasks  # noqa: E402
from minillm.alignment.best_of_n import best_of_n  # noqa: E402
from minillm.alignment.dpo import DPOTrainer  # noqa: E402
from minillm.alignment.logprobs import sequence_logprobs  # noqa: E402
from minillm.alignment.preference_data import encode_pair, pair_batch  # noqa: E402
from minillm.alignment.reward_model import load_reward_model, pair_rewards, reward_accuracy  # noqa: E402
from minillm.alignment.reward_train import RewardTrainer  # noqa: E402
from minillm.alignment.train import PreferenceConfig  # noqa: E402
from minillm.autograd import no_grad  # noqa: E402
from minillm.checkpoint import save_checkpoint  # noqa: E402
from minillm.lora import merge_lora  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def plain(model):
    """A copy of model with any LoRA adapters merged (sampling runs DecoderLM.infer on plain layers)."""
    return merge_lora(copy.deepcopy(model)) if getattr(model, "lora_config", None) is not None else model


def answer_kinds(model, tok, prompts, samples, seed):
    """{"rule_rate", "copy_rate", "other_rate"} of sampled answers: reversed (the rule), copied, or neither."""
    answers = [(q, a) for q, row in zip(prompts, tasks.sample_answers(model, tok, prompts, samples, seed)) for a in row]
    right = np.mean([tasks.satisfies(q, a) for q, a in answers])
    copied = np.mean([a == q[:-1] for q, a in answers])
    return {"rule_rate": float(right), "copy_rate": float(copied), "other_rate": float(1 - right - copied)}


def margin(model, pairs):
    """Mean over held-out pairs of log pi(chosen) - log pi(rejected), and the share of pairs where it is > 0."""
    batch = pair_batch(pairs)
    with no_grad():
        logps = sequence_logprobs(model.eval()(batch["ids"], key_padding_mask=batch["mask"]), batch["targets"]).data
    d = logps[:len(pairs)] - logps[len(pairs):]
    return float(d.mean()), float((d > 0).mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/alignment-task")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "alignment.json"))
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--rm-steps", type=int, default=300)
    p.add_argument("--dpo-steps", default="50,100,200,400", help="comma-separated: one DPO run per count")
    p.add_argument("--betas", default="0.1,0.5", help="comma-separated: one DPO run per beta")
    p.add_argument("--pairs", type=int, default=800)
    p.add_argument("--prompts", type=int, default=100, help="held-out prompts sampled")
    p.add_argument("--samples", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--best-of", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    tok = tasks.task_tokenizer()
    prompts = tasks.task_prompts(args.prompts, seed=1, split="heldout")
    held = [encode_pair(r, tok, "held-out") for r in tasks.preference_records(200, seed=1, split="heldout")]
    report = {"task": "reverse a word (minillm/alignment/tasks.py)", "held_out_prompts": args.prompts,
              "samples_per_prompt": args.samples, "temperature": 1.0, "sampled_answers": args.prompts * args.samples,
              "held_out_pairs": len(held), "train_pairs": args.pairs}

    t0 = time.perf_counter()
    sft = tasks.sft_starting_point(tok, seed=args.seed, steps=args.sft_steps)
    report["sft"] = {"steps": args.sft_steps, "seconds": time.perf_counter() - t0,
                     **answer_kinds(sft, tok, prompts, args.samples, seed=11),
                     "held_out_logp_margin": margin(sft, held)[0], "held_out_logp_margin_positive": margin(sft, held)[1]}
    print("sft", report["sft"], flush=True)
    base = os.path.join(args.out, "sft")
    save_checkpoint(base, sft, tok, state={"step": args.sft_steps})
    data = write_jsonl(os.path.join(args.out, "prefs.jsonl"), tasks.preference_records(args.pairs, seed=args.seed))

    common = dict(method="lora", lora_r=8, lora_alpha=16, target_modules="all-linear", batch_size=16,
                  eval_fraction=0.05, seed=args.seed)
    config = PreferenceConfig(objective="reward", lr=3e-3, max_iters=args.rm_steps, eval_interval=args.rm_steps, **common)
    run = RewardTrainer(base, data, os.path.join(args.out, "rm"), config, progress=False, log=lambda *_: None)
    result = run.run()
    rm, _ = load_reward_model(os.path.join(args.out, "rm"))
    with no_grad():
        accuracy = reward_accuracy(*pair_rewards(rm.eval(), pair_batch(held)))
    stop = tok.encode(tasks.END)[0]
    picks = [tok.decode(best_of_n(sft, rm, tok.encode(q), args.best_of, tasks.WORD_LENGTH + 2, [stop], seed=100 + i)[0])
             for i, q in enumerate(prompts)]
    report["reward_model"] = {"method": "lora", "steps": result["step"], "seconds": result["seconds"],
                              "held_out_pair_accuracy": accuracy,
                              f"best_of_{args.best_of}_rule_rate": float(np.mean([tasks.satisfies(q, a)
                                                                                  for q, a in zip(prompts, picks)]))}
    print("reward model", report["reward_model"], flush=True)

    report["dpo"] = []
    for beta in [float(b) for b in args.betas.split(",")]:
        for steps in [int(n) for n in args.dpo_steps.split(",")]:
            config = PreferenceConfig(objective="dpo", beta=beta, lr=3e-3, max_iters=steps, eval_interval=steps, **common)
            out = os.path.join(args.out, f"dpo-{beta}-{steps}")
            run = DPOTrainer(base, data, out, config, progress=False, log=lambda *_: None)
            result = run.run()
            with open(os.path.join(out, "train_log.jsonl")) as f:
                last = [json.loads(line) for line in f][-1]
            policy = plain(run.model).eval()
            d, positive = margin(policy, held)
            report["dpo"].append({"method": "lora", "beta": beta, "loss": "sigmoid", "steps": result["step"],
                                  "seconds": result["seconds"], **answer_kinds(policy, tok, prompts, args.samples, seed=11),
                                  "held_out_logp_margin": d, "held_out_logp_margin_positive": positive,
                                  "eval_fraction_of_train_file": {k: v for k, v in last.items()
                                                                  if k.startswith("eval_") or k == "val"}})
            print("dpo", report["dpo"][-1], flush=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
