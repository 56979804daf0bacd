"""Decode speed: tokens/s at batch 1 with the KV cache, and the time to first token (the prefill
of a 200-token prompt), minillm against PyTorch eager, for llama-15m and llama-110m dimensions
with random weights (the two are first checked to give the same logits).

    python benchmarks/generate.py [--new-tokens 64] [--threads 2] [--repeats 5]

Runs are interleaved (ours, torch, ours, torch, ...) and the medians reported.
Writes benchmarks/results/generate.json.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm.models import DecoderLM, ModelConfig, load_preset  # noqa: E402


def run_ours(model, prompt, new_tokens):
    """(seconds to the first token, seconds per decoded token), greedy, batch 1, through
    DecoderLM.infer as generate() runs it (no tape, the head on the last position only)."""
    caches = model.new_caches(1, len(prompt) + new_tokens + 1)
    t0 = time.perf_counter()
    token = int(model.infer(np.array([prompt]), caches=caches, last_only=True)[0, -1].argmax())
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        token = int(model.infer(np.array([[token]]), caches=caches, last_only=True)[0, -1].argmax())
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / new_tokens


def run_torch(tmodel, prompt, new_tokens):
    import torch
    with torch.no_grad():
        caches = tmodel.new_caches(1, len(prompt) + new_tokens + 1)
        t0 = time.perf_counter()
        token = int(tmodel(torch.tensor([prompt]), caches=caches, start=0)[0, -1].argmax())
        t1 = time.perf_counter()
        for i in range(new_tokens):
            token = int(tmodel(torch.tensor([[token]]), caches=caches, start=len(prompt) + i)[0, -1].argmax())
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / new_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=50)   # 200 + 50 fits llama-15m's context of 256
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "generate.json"))
    args = parser.parse_args()
    minillm.set_num_threads(args.threads)
    try:
        import torch
        from torch_models import TorchLM, check_same_logits, load_from_minillm
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rows = []
    for name in ("llama-15m", "llama-110m"):
        config = ModelConfig(**load_preset(name)["model"])
        model = DecoderLM(config, rng=np.random.default_rng(0))
        prompt = np.random.default_rng(1).integers(0, config.vocab_size, args.prompt_tokens).tolist()
        runs = {"ours": lambda: run_ours(model, prompt, args.new_tokens)}
        if torch is not None:
            tmodel = load_from_minillm(TorchLM(config), model).eval()
            check_same_logits(tmodel, model, np.array([prompt[:32]]))
            runs["torch"] = lambda: run_torch(tmodel, prompt, args.new_tokens)
        samples = {k: [] for k in runs}
        for name_run, fn in runs.items():   # warm-up
            fn()
        for _ in range(args.repeats):
            for key, fn in runs.items():
                samples[key].append(fn())
        med = {k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)) for k, v in samples.items()}
        row = dict(model=name, params=f"{model.num_parameters() / 1e6:.1f}M", ours_tok_s=1 / med["ours"][1],
                   ours_ttft_ms=med["ours"][0] * 1e3)
        if "torch" in med:
            row.update(torch_tok_s=1 / med["torch"][1], torch_ttft_ms=med["torch"][0] * 1e3,
                       ratio=med["torch"][1] / med["ours"][1], ttft_ratio=med["torch"][0] / med["ours"][0])
        rows.append(row)
    info = machine_info()
    print(f"{info['cpu']}, threads {args.threads}; batch 1, greedy, KV cache; prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new; ratio = torch time / our time\n")
    print_table(rows, [("model", "model", "{}"), ("params", "params", "{}"), ("ours_tok_s", "ours tok/s", "{:.1f}"),
                       ("torch_tok_s", "torch tok/s", "{:.1f}"), ("ratio", "x torch", "{:.2f}"),
                       ("ours_ttft_ms", "ours TTFT ms", "{:.0f}"), ("torch_ttft_ms", "torch TTFT ms", "{:.0f}"),
                       ("ttft_ratio", "TTFT x torch", "{:.2f}")])
    write_json(args.out, {"machine": info, "threads": args.threads, "repeats": args.repeats,
                          "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "results": rows})


if __name__ == "__main__":
    main()
