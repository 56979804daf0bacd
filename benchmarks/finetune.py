"""Fine-tuning throughput and memory at SmolLM2-135M: full, LoRA and QLoRA (NF4) in minillm, beside
peft + transformers (full and LoRA) when they are installed, on the same data and threads.

    python benchmarks/finetune.py [--steps 5] [--batch-size 4] [--threads N] [--methods full,lora,qlora]

Each configuration runs in its own process (so its peak resident memory, VmHWM, is its own): a few
optimizer steps on the in-process date task (minillm/sft_eval.py), the first step a warm-up. Prints
one JSON line per configuration: training tokens/s (padded tokens per second of step time) and the
peak RSS in MiB. The machine should be otherwise idle for the figures to mean anything.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_minillm(method, steps, batch_size, data, out):
    from minillm.finetune import FinetuneConfig, Finetuner
    config = FinetuneConfig(method=method, lora_r=8, lora_alpha=16, target_modules="all-linear", scheme="nf4",
                            lr=1e-4, max_iters=steps, batch_size=batch_size, eval_interval=10 ** 6, eval_fraction=0.05)
    run = Finetuner("smollm2-135m-instruct", data, out, config, progress=False, log=lambda *a: None)
    times, tokens = [], 0
    for step in range(steps):
        t0 = time.perf_counter()
        record = run.train_step()
        if step:                                     # the first step warms up
            times.append(time.perf_counter() - t0)
            tokens += record["tokens"]
    return tokens / sum(times)


def run_peft(method, steps, batch_size, data):
    import torch
    import transformers
    from minillm.pretrained import packaged_model_path
    from minillm.sft_data import load_examples, pad_batch
    from minillm.pretrained import load_pretrained
    _, tokenizer = load_pretrained("smollm2-135m-instruct")
    path = packaged_model_path("smollm2-135m-instruct")          # the packaged Q4_1 GGUF, dequantized by both
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                              torch_dtype=torch.float32)
    if method == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                           task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    examples = load_examples(data, tokenizer, 2048)
    times, tokens = [], 0
    for step in range(steps):
        batch = pad_batch(examples[step * batch_size:(step + 1) * batch_size])
        t0 = time.perf_counter()
        ids, targets = torch.tensor(batch["ids"]), torch.tensor(batch["targets"])
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            times.append(time.perf_counter() - t0)
            tokens += ids.numel()
    return tokens / sum(times)


def child(args):
    if args.threads:
        from minillm import set_num_threads
        set_num_threads(args.threads)
    engine, method = args.child.split(":")
    if engine == "minillm":
        tok_s = run_minillm(method, args.steps, args.batch_size, args.data, args.out)
    else:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        tok_s = run_peft(method, args.steps, args.batch_size, args.data)
    print(json.dumps({"engine": engine, "method": method, "tokens_per_s": round(tok_s, 1),
                      "peak_rss_mib": round(peak_rss_mib(), 1), "steps": args.steps, "batch_size": args.batch_size}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--out", default="/tmp/minillm-bench-finetune")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from minillm.sft_eval import date_format_records
    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(args.out, "data.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in date_format_records(args.steps * args.batch_size + 40))
    runs = [f"minillm:{m}" for m in args.methods.split(",")]
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
        runs += [f"peft:{m}" for m in args.methods.split(",") if m in ("full", "lora")]
    except ImportError:
        print("(peft + transformers not installed: minillm alone)", file=sys.stderr)
    for name in runs:
        out = os.path.join(args.out, name.replace(":", "-"))
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", name, "--data", data, "--out", out, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size)] + (["--threads", str(args.threads)] if args.threads else [])
        result = subprocess.run(cmd, capture_output=True, text=True)
        print(result.stdout.strip() or f"{name}: failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
    main()
