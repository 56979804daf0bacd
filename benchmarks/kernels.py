"""Benchmark the native kernels against their baselines: NumPy/OpenBLAS for the GEMM, the NumPy
reference kernels for everything else, and PyTorch (CPU) as a second column where installed.

    python benchmarks/kernels.py                 # everything, 2 threads
    python benchmarks/kernels.py --only gemm     # gemm | attention | memory | rows
    python benchmarks/kernels.py --isa avx2      # our kernels forced onto one path (minillm info lists them)
    python benchmarks/kernels.py --quick         # fewer repeats, smaller shapes (a smoke run)

Each row: median seconds per call of ours and the baselines, timed interleaved in this process
(benchmarks/harness.py, which sleeps between libraries so one's spinning threads do not slow the
next), and ratio = baseline time / our time (> 1 means we are faster). The GEMM section ends with
the project's targets: sgemm 1024^3 (NN) >= 1.0x NumPy, the geomean of the transformer shapes in
NN/NT/TN >= 1.0x, each decode GEMV (y = x W^T) >= 1.0x; the header names the CPU and the path each
kernel family takes. Writes benchmarks/results/kernels.json.
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
from minillm.kernels import native, reference  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

SGEMM = (1024, 1024, 1024)                                                  # (M, K, N)
TRANSFORMER = [(768, 128, 512), (768, 512, 128), (768, 128, 128), (3072, 288, 768), (3072, 768, 288)]
GEMV = [(1, 288, 32000), (1, 768, 768), (1, 768, 2048)]
SETTLE = 0.2   # seconds between libraries: OpenBLAS's and torch's threads spin for a while after a call


def native_kernel(name):
    return native.KERNELS.get(name)


def gemm_cases(quick):
    """(group, M, K, N, transposes): sgemm 1024^3, the transformer shapes in NN (dX = dY W), NT
    (y = x W^T, the forward) and TN (dW = dY^T X), and the decode GEMVs (NT, and NN for reference)."""
    transformer = TRANSFORMER[:2] if quick else TRANSFORMER
    return ([("sgemm", *SGEMM, t) for t in ("NN", "NT", "TN")] +
            [("transformer", *shape, t) for shape in transformer for t in ("NN", "NT", "TN")] +
            [("gemv", *shape, t) for shape in (GEMV[1:2] if quick else GEMV) for t in ("NT", "NN")])


def gemm_rows(repeats, quick):
    """C = op(A) op(B) at the cases of gemm_cases, ours against NumPy (and torch)."""
    matmul = native_kernel("matmul")
    rows = []
    rng = np.random.default_rng(0)
    for group, M, K, N, trans in gemm_cases(quick):
        ta, tb = trans[0] == "T", trans[1] == "T"
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        baselines = {"numpy": lambda: np.matmul(a_op, b_op)}
        if torch is not None:
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            at_op, bt_op = (at.T if ta else at), (bt.T if tb else bt)
            baselines["torch"] = lambda: torch.matmul(at_op, bt_op)
        if matmul is None:
            rows.append(dict(kernel=f"{group} {trans}", shape=f"{M}x{K}x{N}", note="no native matmul"))
            continue
        t = compare(lambda: matmul(a, b, trans_a=ta, trans_b=tb), baselines, repeats=repeats, settle=SETTLE)
        flops = 2.0 * M * N * K
        rows.append(dict(kernel=f"{group} {trans}", group=group, trans=trans, shape=f"{M}x{K}x{N}",
                         ours=t["ours"], numpy=t["numpy"], torch=t.get("torch"), gflops=flops / t["ours"] / 1e9,
                         ratio=t["numpy"] / t["ours"],
                         ratio_torch=t["torch"] / t["ours"] if "torch" in t else None))
    return rows


def gemm_targets(rows):
    """The GEMM targets (docs/performance.md) from the timed rows: (what, ratio, target) each."""
    timed = [r for r in rows if r.get("ratio")]
    out = []
    sgemm = [r["ratio"] for r in timed if r["group"] == "sgemm" and r["trans"] == "NN"]
    if sgemm:
        out.append(("sgemm 1024^3 NN x numpy", sgemm[0], 1.0))
    transformer = [r["ratio"] for r in timed if r["group"] == "transformer"]
    if transformer:
        geomean = float(np.exp(np.mean(np.log(transformer))))
        out.append((f"transformer shapes, geomean of {len(transformer)} (NN/NT/TN) x numpy", geomean, 1.0))
    out += [(f"GEMV {r['shape']} (y = x W^T) x numpy", r["ratio"], 1.0)
            for r in timed if r["group"] == "gemv" and r["trans"] == "NT"]
    return out


def print_targets(targets):
    print("\nTargets (ratio = NumPy time / our time):")
    for what, ratio, target in targets:
        print(f"  {what:<58} {ratio:5.2f}  (target >= {target:.1f}: {'met' if ratio >= target else 'NOT met'})")


def attention_inputs(B, H, T, D, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))
    return q, k, v, dout


def attention_step(impl, q, k, v, dout):
    out, lse = impl.attention_forward(q, k, v, causal=True)
    return impl.attention_backward(dout, q, k, v, out, lse, causal=True)


def attention_rows(repeats, quick):
    B, H, T, D = (2, 4, 128, 64) if quick else (4, 8, 256, 64)
    q, k, v, dout = attention_inputs(B, H, T, D)
    fwd, bwd = native_kernel("attention_forward"), native_kernel("attention_backward")
    shape = f"B{B} H{H} T{T} D{D} causal"
    if fwd is None:
        return [dict(kernel="attention fwd+bwd", shape=shape, note="no native attention")]

    class Native:
        attention_forward, attention_backward = staticmethod(fwd), staticmethod(bwd)

    baselines = {"numpy": lambda: attention_step(reference, q, k, v, dout)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
        tdout = torch.from_numpy(dout)

        def torch_step():
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            torch.autograd.grad(out, (tq, tk, tv), tdout)
        baselines["torch"] = torch_step
    t = compare(lambda: attention_step(Native, q, k, v, dout), baselines, repeats=repeats, settle=SETTLE)
    return [dict(kernel="attention fwd+bwd", shape=shape, ours=t["ours"], numpy=t["numpy"], torch=t.get("torch"),
                 ratio=t["numpy"] / t["ours"], ratio_torch=t["torch"] / t["ours"] if "torch" in t else None)]


def memory_case(backend, T):
    """Run in a child process: peak RSS growth (MiB) of one attention fwd+bwd at length T."""
    from minillm.train import peak_memory_mib
    q, k, v, dout = attention_inputs(4, 8, T, 64)
    impl = reference if backend == "numpy" else native.attention
    before = peak_memory_mib()
    attention_step(impl, q, k, v, dout)
    print(json.dumps({"peak_mib": peak_memory_mib() - before}))


def memory_rows(quick):
    """Peak memory of attention fwd+bwd beyond its inputs, B4 H8 D64 causal, each in a fresh process."""
    rows = []
    for T in (256, 1024) if quick else (256, 1024, 4096):
        row = dict(kernel="attention peak memory", shape=f"T{T}")
        for backend in ("native", "numpy"):
            if backend == "native" and native_kernel("attention_forward") is None:
                continue
            if backend == "numpy" and T > 1024:
                continue    # the reference's (B, H, T, T) matrices need ~10 GB here
            result = subprocess.run([sys.executable, __file__, "--memory-case", backend, str(T)],
                                    capture_output=True, text=True, check=True)
            row[f"mem_{backend}"] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
        rows.append(row)
    return rows


def rows_rows(repeats, quick):
    """Row-wise kernels at transformer shapes: forward and backward separately."""
    rng = np.random.default_rng(0)
    N, C = (1024, 768) if quick else (8192, 768)
    x = rng.standard_normal((N, C)).astype(np.float32)
    dy = rng.standard_normal((N, C)).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    cases = {
        "softmax": (lambda k: k.softmax_forward(x), lambda k, s: k.softmax_backward(dy, s)),
        "log_softmax": (lambda k: k.log_softmax_forward(x), lambda k, s: k.log_softmax_backward(dy, s)),
        "gelu": (lambda k: k.gelu_forward(x), lambda k, s: k.gelu_backward(dy, x)),
        "silu": (lambda k: k.silu_forward(x), lambda k, s: k.silu_backward(dy, x)),
        "rms_norm": (lambda k: k.rms_norm_forward(x, w, 1e-5),
                     lambda k, s: k.rms_norm_backward(dy, x, w, s[1])),
        "layer_norm": (lambda k: k.layer_norm_forward(x, w, b, 1e-5),
                       lambda k, s: k.layer_norm_backward(dy, s[1], w, s[2])),
    }
    V, NV = 32000, (256 if quick else 1024)
    logits = rng.standard_normal((NV, V)).astype(np.float32)
    targets = rng.integers(0, V, NV)
    targets[::7] = -100
    cases["cross_entropy"] = (lambda k: k.cross_entropy_forward(logits, targets, -100, "mean"),
                              lambda k, s: k.cross_entropy_backward(np.float32(1.0), s[1], targets, -100, "mean"))
    torch_cases = {}
    if torch is not None:
        F = torch.nn.functional
        tx = torch.from_numpy(x)
        tw, tb = torch.from_numpy(w), torch.from_numpy(b)
        torch_cases = {"softmax": lambda: torch.softmax(tx, -1), "log_softmax": lambda: torch.log_softmax(tx, -1),
                       "gelu": lambda: F.gelu(tx, approximate="tanh"), "silu": lambda: F.silu(tx),
                       "rms_norm": lambda: F.rms_norm(tx, (C,), tw, 1e-5),
                       "layer_norm": lambda: F.layer_norm(tx, (C,), tw, tb, 1e-5),
                       "cross_entropy": lambda: F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets))}

    class Native:
        def __getattr__(self, name):
            kernel = native_kernel(name)
            if kernel is None:
                raise LookupError(name)
            return kernel

    ours_impl = Native()
    rows = []
    for name, (forward, backward) in cases.items():
        shape = f"{NV}x{V}" if name == "cross_entropy" else f"{N}x{C}"
        try:
            forward(ours_impl)
        except LookupError:
            rows.append(dict(kernel=f"{name} fwd", shape=shape, note="no native kernel"))
            continue
        base = {"numpy": lambda: forward(reference)}
        if name in torch_cases:
            base["torch"] = torch_cases[name]
        t = compare(lambda: forward(ours_impl), base, repeats=repeats, settle=SETTLE)
        rows.append(dict(kernel=f"{name} fwd", shape=shape, ours=t["ours"], numpy=t["numpy"], torch=t.get("torch"),
                         ratio=t["numpy"] / t["ours"],
                         ratio_torch=t["torch"] / t["ours"] if "torch" in t else None))
        s_ours, s_ref = forward(ours_impl), forward(reference)
        t = compare(lambda: backward(ours_impl, s_ours), {"numpy": lambda: backward(reference, s_ref)},
                    repeats=repeats, settle=SETTLE)
        rows.append(dict(kernel=f"{name} bwd", shape=shape, ours=t["ours"], numpy=t["numpy"],
                         ratio=t["numpy"] / t["ours"]))
    return rows


COLUMNS = [("kernel", "kernel", "{}"), ("shape", "shape", "{}"), ("ours", "ours ms", "{:.3f}"),
           ("numpy", "numpy ms", "{:.3f}"), ("torch", "torch ms", "{:.3f}"), ("gflops", "GFLOP/s", "{:.1f}"),
           ("ratio", "x numpy", "{:.2f}"), ("ratio_torch", "x torch", "{:.2f}"), ("note", "note", "{}")]
MEMORY_COLUMNS = [("kernel", "kernel", "{}"), ("shape", "shape", "{}"), ("mem_native", "ours MiB", "{:.1f}"),
                  ("mem_numpy", "numpy MiB", "{:.1f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["gemm", "attention", "memory", "rows"], action="append")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", help="force our kernels onto this path (one of minillm.build_info()['supported_isas'])")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "kernels.json"))
    parser.add_argument("--memory-case", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        return memory_case(args.memory_case[0], int(args.memory_case[1]))

    minillm.set_num_threads(args.threads)
    if native.AVAILABLE:
        native._C.set_adaptive_threads(False)   # the threads asked for, whatever else the machine runs
        if args.isa:
            native._C.force_isa(args.isa)
    if torch is not None:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    sections = args.only or ["gemm", "attention", "memory", "rows"]
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; minillm threads {minillm.get_num_threads()}, "
          f"SIMD {info['minillm']['simd']}; numpy {info['numpy']}; torch {torch.__version__ if torch else 'absent'}")
    print("paths:", ", ".join(f"{k} {v}" for k, v in info["minillm"].get("kernel_paths", {}).items()))
    print("ratio = baseline time / our time (> 1: ours is faster); medians of", repeats, "interleaved repeats\n")
    results = {}
    if "gemm" in sections:
        results["gemm"] = gemm_rows(repeats, args.quick)
    if "attention" in sections:
        results["attention"] = attention_rows(repeats, args.quick)
    if "rows" in sections:
        results["rows"] = rows_rows(repeats, args.quick)
    timed = [r for key in ("gemm", "attention", "rows") for r in results.get(key, [])]
    if timed:
        for r in timed:
            for key in ("ours", "numpy", "torch"):
                if r.get(key) is not None:
                    r[key] *= 1e3          # seconds -> ms for the table
        print_table(timed, COLUMNS)
    if "gemm" in sections:
        results["targets"] = [dict(what=w, ratio=r, target=t) for w, r, t in gemm_targets(results["gemm"])]
        print_targets(gemm_targets(results["gemm"]))
    if "memory" in sections:
        results["memory"] = memory_rows(args.quick)
        print()
        print_table(results["memory"], MEMORY_COLUMNS)
    write_json(args.out, {"machine": info, "threads": args.threads, "repeats": repeats, "results": results})


if __name__ == "__main__":
    main()
