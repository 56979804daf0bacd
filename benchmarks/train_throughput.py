"""Training throughput: tokens/s of a full step (forward, backward, AdamW) of minillm against
PyTorch eager on the CPU, same architecture, same batch, same threads.

    python benchmarks/train_throughput.py                  # shakespeare-char and llama-15m, 2 threads
    python benchmarks/train_throughput.py --quick

The two models start from the same weights (their logits are checked equal first); steps are
timed interleaved, median of several repeats. Peak memory of each framework is measured in a
fresh process doing 3 steps. Writes benchmarks/results/train_throughput.json.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare, machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm.models import DecoderLM, ModelConfig, load_preset  # noqa: E402
from minillm.optim import AdamW, param_groups  # noqa: E402
from minillm.train import peak_memory_mib  # noqa: E402

CASES = {"shakespeare-char": (12, 64), "llama-15m": (8, 256)}   # preset: (batch, context)


def make(name, vocab=65):
    spec = load_preset(name)["model"]
    config = ModelConfig(**dict(spec, vocab_size=spec["vocab_size"] or vocab))
    return config, DecoderLM(config, rng=np.random.default_rng(0))


def ours_step(model, opt, x, y):
    loss = model.loss(x, y)              # what Trainer.train_step runs: the head and its loss as one node
    loss.backward()
    opt.step()
    opt.zero_grad()


def torch_step(tmodel, topt, tx, ty):
    _, loss = tmodel(tx, ty)
    loss.backward()
    topt.step()
    topt.zero_grad(set_to_none=True)


def setup(name, threads, framework):
    config, model = make(name)
    batch, T = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.integers(0, config.vocab_size, (batch, T))
    y = rng.integers(0, config.vocab_size, (batch, T))
    minillm.set_num_threads(threads)
    if framework == "minillm":
        opt = AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))
        return lambda: ours_step(model, opt, x, y)
    import torch
    from torch_models import TorchLM, load_from_minillm
    torch.set_num_threads(threads)
    tmodel = load_from_minillm(TorchLM(config), model)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return lambda: torch_step(tmodel, topt, tx, ty)


def memory_case(name, threads, framework):
    step = setup(name, threads, framework)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mib": peak_memory_mib()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "train_throughput.json"))
    parser.add_argument("--memory-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        return memory_case(args.memory_case[0], args.threads, args.memory_case[1])
    try:
        import torch
        from torch_models import TorchLM, check_same_logits, load_from_minillm
    except ImportError:
        torch = None
    repeats = 3 if args.quick else args.repeats
    rows = []
    for name, (batch, T) in CASES.items():
        tokens = batch * T
        ours = setup(name, args.threads, "minillm")
        baselines = {}
        if torch is not None:
            config, model = make(name)
            check_same_logits(load_from_minillm(TorchLM(config), model), model,
                              np.random.default_rng(2).integers(0, config.vocab_size, (2, 16)))
            baselines["torch"] = setup(name, args.threads, "torch")
        t = compare(ours, baselines, repeats=repeats, min_time=0.0)
        row = dict(model=name, batch=f"{batch}x{T}", ours_tok_s=tokens / t["ours"],
                   torch_tok_s=tokens / t["torch"] if "torch" in t else None,
                   ratio=t["torch"] / t["ours"] if "torch" in t else None)
        for framework in ["minillm"] + (["torch"] if torch is not None else []):
            result = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--memory-case",
                                     name, framework], capture_output=True, text=True, check=True)
            row[f"mem_{framework}"] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
        rows.append(row)
    info = machine_info()
    print(f"{info['cpu']}, threads {args.threads}; full training step (forward, backward, AdamW); "
          f"ratio = torch time / our time\n")
    print_table(rows, [("model", "model", "{}"), ("batch", "batch", "{}"), ("ours_tok_s", "ours tok/s", "{:,.0f}"),
                       ("torch_tok_s", "torch tok/s", "{:,.0f}"), ("ratio", "x torch", "{:.2f}"),
                       ("mem_minillm", "ours peak MiB", "{:.0f}"), ("mem_torch", "torch peak MiB", "{:.0f}")])
    write_json(args.out, {"machine": info, "threads": args.threads, "repeats": repeats, "results": rows})


if __name__ == "__main__":
    main()
