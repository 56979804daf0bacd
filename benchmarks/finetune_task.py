"""LoRA SFT of SmolLM2-135M-Instruct on an in-process task with a checkable answer (rewrite an ISO date
as DD/MM/YYYY, the reply only the date): exact match on held-out prompts before and after.

    python benchmarks/finetune_task.py [--steps 120] [--train 400] [--eval 60] [--out /tmp/ft-smollm2]

Prints (and writes to OUT/task.json) the base and tuned exact match, the steps, the wall time and the
training tokens/s. Runs `minillm finetune`'s own loop (Finetuner) on a JSONL file it writes.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minillm.finetune import FinetuneConfig, Finetuner  # noqa: E402
from minillm.pretrained import load_pretrained  # noqa: E402
from minillm.sft_eval import date_format_records, exact_match  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--eval", type=int, default=60)
    p.add_argument("--method", default="lora")
    p.add_argument("--out", default="/tmp/ft-smollm2")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, held = date_format_records(args.train, seed=0), date_format_records(args.eval, seed=1)
    data = os.path.join(args.out, "train.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    base, tokenizer = load_pretrained(args.model)
    t0 = time.perf_counter()
    before, replies = exact_match(base, tokenizer, held)
    print(f"base exact match {before:.3f} ({time.perf_counter() - t0:.0f} s); e.g. {replies[0]!r}", flush=True)
    del base
    config = FinetuneConfig(method=args.method, lora_r=8, lora_alpha=16, target_modules="all-linear", lr=args.lr,
                            warmup_iters=10, max_iters=args.steps, batch_size=8, eval_interval=args.steps,
                            eval_fraction=0.05, seed=0)
    run_dir = os.path.join(args.out, "run")
    if os.path.isdir(run_dir):
        import shutil
        shutil.rmtree(run_dir)
    run = Finetuner(args.model, data, run_dir, config, progress=False)
    result = run.run()
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        steps = [json.loads(line) for line in f if '"eval"' not in line]
    tok_s = sum(s["tokens"] for s in steps) / sum(s["tokens"] / s["tokens_per_s"] for s in steps)
    tuned, _ = load_pretrained(run_dir)              # the adapter folded in, as generate and chat load it
    after, replies = exact_match(tuned, tokenizer, held)
    report = {"model": args.model, "method": args.method, "steps": result["step"], "batch_size": 8,
              "train_records": args.train, "eval_records": args.eval, "exact_match_before": before,
              "exact_match_after": after, "train_seconds": result["seconds"], "train_tokens_per_s": tok_s,
              "peak_memory_mib": result["peak_memory_mib"], "final_loss": steps[-1]["loss"], "example": replies[0]}
    print(json.dumps(report, indent=1))
    with open(os.path.join(args.out, "task.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
