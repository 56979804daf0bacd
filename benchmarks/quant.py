"""Quantization: GEMV speed, decode speed and perplexity of INT8 / INT4 against float32.

    python benchmarks/quant.py [--only gemv|prefill|decode|accuracy] [--quick] [--threads 2] [--isa avx2]

gemv      y = x W^T for x (1, K) at decode shapes, our float32 GEMV (minillm.kernels.matmul,
          NT) against quant_matmul in each scheme, timed interleaved. "cold": the weights are cycled
          through enough copies (> 128 MB) that every call streams them from memory, as decode does;
          "hot": one matrix, in cache. GB/s counts the weight bytes (float32 or quantized arrays)
          read per call, next to the machine's read bandwidth measured here.
prefill   y = x W^T for x (M, K), M = 64, 128, 256 (a prompt, an evaluation batch), our float32 GEMM
          against quant_matmul in each scheme: ratio = float32 time / quantized time.
decode    tokens/s at batch 1 with the KV cache, llama-15m and llama-110m dims, random weights,
          float32 and each scheme, interleaved; model.safetensors size on disk for each.
accuracy  perplexity on the held-out split of the built-in corpus for the trained shakespeare-char
          model (--char-ckpt, else trained here) and a llama-15m-dims model trained briefly with
          BPE (--bpe-ckpt, else trained here for --bpe-iters steps), float32 and each scheme.

The run ends with the targets (docs/performance.md): decode int8 >= 2x and q4_0 >= 3x float32 at llama-110m,
int8 >= 1.5x at llama-15m; prefill and evaluation at least as fast as float32 (>= 1.0x), each "met"
or "NOT met". --isa forces our kernels onto one path (minillm.build_info()['supported_isas']).
Writes benchmarks/results/quant.json.
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare, machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm import checkpoint as ckpt  # noqa: E402
from minillm import kernels  # noqa: E402
from minillm.kernels.reference.quant import SCHEMES  # noqa: E402
from minillm.models import DecoderLM, ModelConfig, load_preset  # noqa: E402
from minillm.nn.quantized import quantize_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GEMV_SHAPES = [(768, 768), (768, 2048), (2048, 768), (288, 32000)]   # (K, N): x (1, K), W (N, K)


def memory_bandwidth(mib=512):
    """Read bandwidth in GB/s: the best of NumPy's sum (one thread) and OpenBLAS's multi-threaded
    sgemv over a 512 MiB array, each the median of 5."""
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)
    m = a.reshape(-1, 4096)
    v = np.ones(4096, dtype=np.float32)
    best = 0.0
    for fn in (lambda: a.sum(), lambda: m @ v):
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best = max(best, a.nbytes / statistics.median(times) / 1e9)
    return best


def bench_gemv(args):
    rng = np.random.default_rng(0)
    rows = []
    for K, N in GEMV_SHAPES:
        w = rng.standard_normal((N, K)).astype(np.float32)
        x = rng.standard_normal((1, K)).astype(np.float32)
        copies = 1 if args.quick else max(1, math.ceil(128 * 2**20 / w.nbytes))
        ws = [w + np.float32(i * 1e-3) for i in range(copies)]
        quantized = {s: [kernels.quantize_weights(wi, s) for wi in ws] for s in SCHEMES}
        nbytes = {"f32": w.nbytes, **{s: sum(a.nbytes for a in quantized[s][0].values()) for s in SCHEMES}}

        def f32(ws=ws, x=x):
            for wi in ws:
                kernels.matmul(x, wi, trans_b=True)

        def quant(s, x=x, quantized=quantized):
            for qw in quantized[s]:
                kernels.quant_matmul(x, s, **qw)

        for temperature, n in (("cold", copies), ("hot", 1)):
            if temperature == "hot":
                f32_fn = lambda w=w, x=x: kernels.matmul(x, w, trans_b=True)   # noqa: E731
                q_fns = {s: (lambda s=s: kernels.quant_matmul(x, s, **quantized[s][0])) for s in SCHEMES}
            else:
                f32_fn = f32
                q_fns = {s: (lambda s=s: quant(s)) for s in SCHEMES}
            t = compare(f32_fn, q_fns, repeats=args.repeats)
            row = dict(shape=f"1x{K}x{N}", temp=temperature, f32_us=t["ours"] / n * 1e6,
                       f32_gbs=nbytes["f32"] * n / t["ours"] / 1e9)
            for s in SCHEMES:
                row[f"{s}_x"] = t["ours"] / t[s]
                row[f"{s}_gbs"] = nbytes[s] * n / t[s] / 1e9
            rows.append(row)
            if args.quick:
                break
    columns = [("shape", "x (1,K) W (N,K)", "{}"), ("temp", "weights", "{}"), ("f32_us", "f32 us", "{:.1f}"),
               ("f32_gbs", "f32 GB/s", "{:.1f}")]
    for s in SCHEMES:
        columns += [(f"{s}_x", f"{s} x", "{:.2f}"), (f"{s}_gbs", "GB/s", "{:.1f}")]
    bandwidth = memory_bandwidth(64 if args.quick else 512)
    print(f"\nGEMV: ratio = float32 time / quantized time; GB/s of weight bytes read. "
          f"Measured memory read bandwidth: {bandwidth:.1f} GB/s\n")
    print_table(rows, columns)
    return {"rows": rows, "memory_bandwidth_gbs": bandwidth}


PREFILL_ROWS = (64, 128, 256)


def bench_prefill(args):
    rng = np.random.default_rng(0)
    rows = []
    for K, N in GEMV_SHAPES[1:2] if args.quick else GEMV_SHAPES:
        w = rng.standard_normal((N, K)).astype(np.float32)
        quantized = {s: kernels.quantize_weights(w, s) for s in SCHEMES}
        for M in PREFILL_ROWS[:1] if args.quick else PREFILL_ROWS:
            x = rng.standard_normal((M, K)).astype(np.float32)
            q_fns = {s: (lambda s=s: kernels.quant_matmul(x, s, **quantized[s])) for s in SCHEMES}
            t = compare(lambda: kernels.matmul(x, w, trans_b=True), q_fns, repeats=args.repeats, settle=0.2)
            row = dict(shape=f"{M}x{K}x{N}", f32_ms=t["ours"] * 1e3, f32_gflops=2 * M * K * N / t["ours"] / 1e9)
            row.update({f"{s}_x": t["ours"] / t[s] for s in SCHEMES})
            rows.append(row)
    print("\nPrefill: y = x W^T, x (M, K), W (N, K); ratio = our float32 GEMM time / quantized time\n")
    print_table(rows, [("shape", "M x K x N", "{}"), ("f32_ms", "f32 ms", "{:.2f}"), ("f32_gflops", "f32 GFLOP/s", "{:.0f}")]
                + [(f"{s}_x", f"{s} x", "{:.2f}") for s in SCHEMES])
    return rows


def decode_seconds(model, prompt, new_tokens):
    """Seconds per greedy token at batch 1 with the KV cache, through DecoderLM.infer as generate() runs it."""
    caches = model.new_caches(1, len(prompt) + new_tokens + 1)
    token = int(model.infer(np.array([prompt]), caches=caches, last_only=True)[0, -1].argmax())
    t = time.perf_counter()
    for _ in range(new_tokens):
        token = int(model.infer(np.array([[token]]), caches=caches, last_only=True)[0, -1].argmax())
    return (time.perf_counter() - t) / new_tokens


def checkpoint_size(model):
    from minillm.tokenizers import CharTokenizer
    with tempfile.TemporaryDirectory() as d:
        written = ckpt.save_checkpoint(d, model, CharTokenizer("ab"), state={})
        return os.path.getsize(os.path.join(written, "model.safetensors"))


def bench_decode(args):
    rows = []
    names = ["llama-15m"] if args.quick else ["llama-15m", "llama-110m"]
    for name in names:
        config = ModelConfig(**load_preset(name)["model"])
        prompt = np.random.default_rng(1).integers(0, config.vocab_size, 16).tolist()
        models = {"f32": DecoderLM(config, rng=np.random.default_rng(0))}
        for s in SCHEMES:
            models[s] = quantize_model(DecoderLM(config, rng=np.random.default_rng(0)), s)
        new_tokens = 8 if args.quick else 40
        samples = {k: [] for k in models}
        for m in models.values():
            decode_seconds(m, prompt, 4)                          # warm-up
        for _ in range(args.repeats):
            for key, m in models.items():
                time.sleep(0.02)
                samples[key].append(decode_seconds(m, prompt, new_tokens))
        med = {k: statistics.median(v) for k, v in samples.items()}
        for key, m in models.items():
            rows.append(dict(model=name, scheme=key, tok_s=1 / med[key], x_f32=med["f32"] / med[key],
                             mib=checkpoint_size(m) / 2**20))
        del models
    print("\nDecode, batch 1, KV cache, greedy, random weights; x f32 = float32 time / this time\n")
    print_table(rows, [("model", "model", "{}"), ("scheme", "weights", "{}"), ("tok_s", "tok/s", "{:.1f}"),
                       ("x_f32", "x f32", "{:.2f}"), ("mib", "model.safetensors MiB", "{:.1f}")])
    return rows


def train(out, preset, iters, extra=()):
    from minillm.cli import main
    if ckpt.has_checkpoint(out):
        return out
    code = main(["train", "--preset", preset, "--out", out, "--max-iters", str(iters), "--sample-tokens", "0",
                 "--eval-interval", str(iters), *extra])
    if code:
        raise SystemExit(f"training {preset} failed")
    return out


def bench_accuracy(args):
    from minillm.data import TokenData, encode, read_text
    from minillm.train import evaluate_split
    char = args.char_ckpt or train(os.path.join(RESULTS, "quant-char"), "shakespeare-char",
                                   100 if args.quick else 2000)
    bpe = args.bpe_ckpt or train(os.path.join(RESULTS, "quant-bpe"), "llama-15m", 20 if args.quick else args.bpe_iters,
                                 ["--tokenizer-vocab-size", "4096"] if not args.quick else ["--tokenizer-vocab-size",
                                                                                            "512"])
    rows = []
    for label, path in (("shakespeare-char", char), ("llama-15m dims, BPE", bpe)):
        model, tokenizer = ckpt.build_model(ckpt.load_checkpoint(path))
        val = TokenData(encode(tokenizer, read_text(None)), 0.1).splits["val"]
        if args.quick:
            val = val[:4 * model.config.block_size + 1]
        base = None
        for s in ("f32",) + SCHEMES:
            m = model if s == "f32" else quantize_model(ckpt.build_model(ckpt.load_checkpoint(path))[0], s)
            t = time.perf_counter()
            loss = evaluate_split(m, val, batch_size=16)
            ppl = math.exp(loss)
            base = base or ppl
            rows.append(dict(model=label, scheme=s, loss=loss, ppl=ppl, increase=100 * (ppl / base - 1),
                             seconds=time.perf_counter() - t))
    print("\nPerplexity on the held-out 10% of the built-in corpus; increase over float32\n")
    print_table(rows, [("model", "model", "{}"), ("scheme", "weights", "{}"), ("loss", "loss", "{:.4f}"),
                       ("ppl", "perplexity", "{:.3f}"), ("increase", "increase %", "{:+.2f}"),
                       ("seconds", "eval s", "{:.1f}")])
    return rows


def targets(results):
    """The quantization targets (docs/performance.md) from what was measured: (what, ratio, target) each."""
    out = []
    decode = {(r["model"], r["scheme"]): r["x_f32"] for r in results.get("decode", [])}
    for model, scheme, target in (("llama-110m", "int8", 2.0), ("llama-110m", "q4_0", 3.0), ("llama-15m", "int8", 1.5)):
        if (model, scheme) in decode:
            out.append((f"decode {model} {scheme} x float32", decode[(model, scheme)], target))
    prefill = results.get("prefill", [])
    for scheme in ("int8", "q4_0"):
        if prefill:
            worst = min(prefill, key=lambda r: r[f"{scheme}_x"])
            out.append((f"prefill {scheme} x float32, slowest shape ({worst['shape']})", worst[f"{scheme}_x"], 1.0))
    evals = {(r["model"], r["scheme"]): r["seconds"] for r in results.get("accuracy", [])}
    for (model, scheme), seconds in evals.items():
        if scheme in ("int8", "q4_0") and (model, "f32") in evals:
            out.append((f"evaluation {model} {scheme} x float32", evals[(model, "f32")] / seconds, 1.0))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["gemv", "prefill", "decode", "accuracy"])
    parser.add_argument("--isa", help="force our kernels onto this path (one of minillm.build_info()['supported_isas'])")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--char-ckpt", help="a trained shakespeare-char checkpoint (default: train one)")
    parser.add_argument("--bpe-ckpt", help="a llama-15m-dims BPE checkpoint (default: train one)")
    parser.add_argument("--bpe-iters", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(RESULTS, "quant.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 2)
    minillm.set_num_threads(args.threads)
    if kernels.native.AVAILABLE:
        kernels.native._C.set_adaptive_threads(False)   # the threads asked for, whatever else the machine runs
        if args.isa:
            kernels.native._C.force_isa(args.isa)
    results = {"machine": machine_info(), "threads": args.threads, "repeats": args.repeats}
    info = results["machine"]
    print(f"{info['cpu']}, {info['cores']} cores; threads {args.threads}; quant_matmul path "
          f"{info['minillm'].get('kernel_paths', {}).get('quant_matmul')}, gemm {info['minillm'].get('kernel_paths', {}).get('gemm')}")
    for name, fn in (("gemv", bench_gemv), ("prefill", bench_prefill), ("decode", bench_decode),
                     ("accuracy", bench_accuracy)):
        if args.only in (None, name):
            results[name] = fn(args)
    results["targets"] = [dict(what=w, ratio=r, target=t) for w, r, t in targets(results)]
    if results["targets"]:
        print("\nTargets:")
        for what, ratio, target in targets(results):
            print(f"  {what:<62} {ratio:5.2f}  (target >= {target:.1f}: {'met' if ratio >= target else 'NOT met'})")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
