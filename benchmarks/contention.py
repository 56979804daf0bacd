"""Throughput on a busy machine: training and decoding tokens/s of minillm and PyTorch, on a quiet
machine and with competing CPU-bound processes (`python -c "while True: pass"`), same threads.

    python benchmarks/contention.py                      # train + decode, 2 threads, 1 competitor
    python benchmarks/contention.py --only train --competitors 1 --repeats 5
    python benchmarks/contention.py --env OMP_WAIT_POLICY=active      # try a wait policy on both

train   one step of the default recipe (shakespeare-char: batch 12 x 64, forward, backward, AdamW)
decode  greedy decode at batch 1 with the KV cache, llama-15m dimensions, random weights

Each figure is measured in a fresh child process (OpenMP runtimes read their wait policy when they
load, and two runtimes in one process steal each other's cores), which warms up, then reports the
median tokens/s of several windows. Quiet and loaded runs alternate, `--repeats` times each, and
the medians are reported with loaded / quiet (the target, docs/performance.md: >= 0.5) and ours / torch.
Writes benchmarks/results/contention.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TRAIN_PRESET, TRAIN_BATCH, DECODE_PRESET = "shakespeare-char", (12, 64), "llama-15m"


def train_step_fn(framework, threads):
    """(step function, tokens per step) for the default recipe's training step."""
    import numpy as np
    from train_throughput import make, ours_step, torch_step

    import minillm
    from minillm.optim import AdamW, param_groups
    config, model = make(TRAIN_PRESET)
    batch, T = TRAIN_BATCH
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, config.vocab_size, (batch, T)), rng.integers(0, config.vocab_size, (batch, T))
    minillm.set_num_threads(threads)
    if framework == "minillm":
        opt = AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))
        return (lambda: ours_step(model, opt, x, y)), batch * T
    import torch
    from torch_models import TorchLM, load_from_minillm
    torch.set_num_threads(threads)
    tmodel = load_from_minillm(TorchLM(config), model)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return (lambda: torch_step(tmodel, topt, tx, ty)), batch * T


def decode_fn(framework, threads, tokens=16):
    """(function decoding `tokens` tokens after a 16-token prompt, tokens) at batch 1."""
    import numpy as np
    from generate import run_ours, run_torch

    import minillm
    from minillm.models import DecoderLM, ModelConfig, load_preset
    config = ModelConfig(**load_preset(DECODE_PRESET)["model"])
    model = DecoderLM(config, rng=np.random.default_rng(0))
    prompt = np.random.default_rng(1).integers(0, config.vocab_size, 16).tolist()
    minillm.set_num_threads(threads)
    if framework == "minillm":
        return (lambda: run_ours(model, prompt, tokens)), tokens
    import torch
    from torch_models import TorchLM, load_from_minillm
    torch.set_num_threads(threads)
    tmodel = load_from_minillm(TorchLM(config), model)
    return (lambda: run_torch(tmodel, prompt, tokens)), tokens


def child(framework, workload, threads, seconds):
    """Run in a fresh process: warm up, then print the median tokens/s over 5 windows."""
    fn, tokens = (train_step_fn if workload == "train" else decode_fn)(framework, threads)
    end = time.perf_counter() + max(0.5, seconds / 4)
    while time.perf_counter() < end:   # warm-up: allocations, caches, the thread pool
        fn()
    rates = []
    for _ in range(5):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            done += tokens
        rates.append(done / (time.perf_counter() - start))
    print(json.dumps({"tok_s": statistics.median(rates)}))


def measure(framework, workload, args, competitors):
    """tokens/s of one child run with `competitors` busy processes beside it."""
    env = dict(os.environ)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        time.sleep(0.2 if busy else 0.0)
        out = subprocess.run([sys.executable, __file__, "--child", framework, workload, "--threads", str(args.threads),
                              "--seconds", str(args.seconds)], capture_output=True, text=True, env=env, check=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    time.sleep(0.5)   # let the competitors' CPUs cool down before the next (quiet) run
    return json.loads(out.stdout.strip().splitlines()[-1])["tok_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train", "decode"], action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--competitors", type=int, default=1, help="busy processes beside the loaded runs")
    parser.add_argument("--repeats", type=int, default=3, help="quiet and loaded runs of each case")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per run (after warm-up)")
    parser.add_argument("--frameworks", default="minillm,torch")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the measured processes")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "contention.json"))
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.threads, args.seconds)

    from harness import machine_info, print_table, write_json
    frameworks = args.frameworks.split(",")
    if "torch" in frameworks:
        try:
            import torch  # noqa: F401
        except ImportError:
            frameworks.remove("torch")
    info = machine_info()
    rows = []
    for workload in args.only or ["train", "decode"]:
        figures = {f: {"quiet": [], "loaded": []} for f in frameworks}
        for _ in range(args.repeats):
            for framework in frameworks:
                figures[framework]["quiet"].append(measure(framework, workload, args, 0))
                figures[framework]["loaded"].append(measure(framework, workload, args, args.competitors))
        for framework in frameworks:
            quiet, loaded = (statistics.median(figures[framework][k]) for k in ("quiet", "loaded"))
            rows.append(dict(workload=workload, framework=framework, quiet=quiet, loaded=loaded,
                             kept=loaded / quiet, runs=figures[framework]))
        if "torch" in frameworks and "minillm" in frameworks:
            ours, theirs = rows[-len(frameworks)], rows[-len(frameworks) + frameworks.index("torch")]
            ours["vs_torch_quiet"], ours["vs_torch_loaded"] = ours["quiet"] / theirs["quiet"], ours["loaded"] / theirs["loaded"]
    print(f"{info['cpu']}, {info['cores']} cores; threads {args.threads}; loaded = {args.competitors} competing "
          f"busy process(es); env {args.env or 'default'}; medians of {args.repeats} runs of {args.seconds:g} s")
    print("kept = loaded / quiet (target >= 0.5); x torch = our tokens/s / torch's\n")
    print_table(rows, [("workload", "workload", "{}"), ("framework", "framework", "{}"),
                       ("quiet", "quiet tok/s", "{:,.0f}"), ("loaded", "loaded tok/s", "{:,.0f}"),
                       ("kept", "kept", "{:.2f}"), ("vs_torch_quiet", "x torch quiet", "{:.2f}"),
                       ("vs_torch_loaded", "x torch loaded", "{:.2f}")])
    write_json(args.out, {"machine": info, "threads": args.threads, "competitors": args.competitors,
                          "env": args.env, "repeats": args.repeats, "seconds": args.seconds, "results": rows})


if __name__ == "__main__":
    main()
