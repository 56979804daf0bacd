"""Projected data-parallel efficiency at 8-64 ranks on named interconnects, from a measured
single-rank step and the ring all-reduce cost model (docs/distributed.md explains the model).

    python benchmarks/distributed_projection.py                      # inputs: the README's measured rates
    python benchmarks/distributed_projection.py --from benchmarks/results/distributed.json
    python benchmarks/distributed_projection.py --rank-speedup 16    # ranks 16x faster than the measured one

Weak scaling: every rank keeps the preset's batch (times --grad-accum micro-batches), so the
global batch grows with N, as pretraining scales out. Per step, with B = 4P gradient bytes:

    ring all-reduce     T_ar = 2 (N - 1) k alpha + 2 (N - 1) / N * B / beta     (k buckets)
    reduce-scatter      T_rs = (N - 1) k alpha + (N - 1) / N * B / beta; all-gather T_ag the same, k = 1
    overlap             the buckets but the last start during backward, which is ~2/3 of the
                        forward + backward of the last micro-batch; the last bucket (the embeddings,
                        whose gradient is final only when backward ends) is always exposed
    efficiency          E = T_1 / (T_1 + exposed), T_1 = A T_fb + T_opt a rank's own step
    ZeRO-1              T_opt -> T_opt / N; exposed = reduce-scatter not hidden + the all-gather

No timing here: this is arithmetic on its inputs, which it prints.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minillm.distributed.buckets import FlatLayout  # noqa: E402
from minillm.models import DecoderLM, ModelConfig, load_preset  # noqa: E402

# The README's training-step rates (benchmarks/train_throughput.py, 2 threads on the project's 2-core
# machine): tokens/s of one rank doing forward, backward and AdamW on the preset batch.
README_TOKENS_PER_S = {"shakespeare-char": 12.8e3, "llama-15m": 1.1e3}
VOCAB = {"shakespeare-char": 65, "llama-15m": 32000}
# Line rate (bytes/s) and a typical MPI small-message latency (s). Real MPI reaches ~80-95% of the
# line rate on large messages, so the exposed times below are lower bounds.
INTERCONNECTS = {"10 GbE (TCP)": (1.25e9, 30e-6), "100 GbE (RoCE v2)": (12.5e9, 3e-6),
                 "InfiniBand HDR 200 Gb/s": (25e9, 1e-6)}
RANKS = (8, 16, 32, 64)


def layout_of(case, bucket_mb):
    spec = load_preset(case)
    model = DecoderLM(ModelConfig.from_dict(spec["model"] | {"vocab_size": VOCAB[case]}))
    layout = FlatLayout(list(model.named_parameters())[::-1], bucket_mb * 2 ** 20)
    tokens = spec["train"]["batch_size"] * spec["model"]["block_size"]
    last = layout.buckets[-1]
    return layout.total, len(layout.buckets), last[1] - last[0], tokens


def ring(n, nbytes, buckets, alpha, beta, phases=2):
    """phases=2: all-reduce; 1: reduce-scatter or all-gather."""
    return phases * (n - 1) * buckets * alpha + phases * (n - 1) / n * nbytes / beta


def project(case, step_s, opt_s, n, interconnect, grad_accum, bucket_mb):
    beta, alpha = INTERCONNECTS[interconnect]
    params, buckets, last, _ = layout_of(case, bucket_mb)
    fb = step_s - (opt_s or 0.0)                            # forward + backward of one micro-batch
    t1 = grad_accum * fb + (opt_s or 0.0)
    backward = 2 / 3 * fb
    full, tail = 4 * params, 4 * last
    ar_rest = ring(n, full - tail, buckets - 1, alpha, beta)
    exposed_sync = ring(n, full, 1, alpha, beta)            # one all-reduce after backward
    exposed_overlap = ring(n, tail, 1, alpha, beta) + max(0.0, ar_rest - backward)
    rs_rest = ring(n, full - tail, buckets - 1, alpha, beta, phases=1)
    exposed_zero = (ring(n, tail, 1, alpha, beta, phases=1) + max(0.0, rs_rest - backward)
                    + ring(n, full, 1, alpha, beta, phases=1))
    row = {"model": case, "interconnect": interconnect, "ranks": n, "grad_mb": full / 1e6,
           "allreduce_ms": 1e3 * exposed_sync, "eff_sync": t1 / (t1 + exposed_sync),
           "eff_overlap": t1 / (t1 + exposed_overlap)}
    if opt_s is not None:
        row["eff_zero"] = t1 / (t1 - opt_s * (1 - 1 / n) + exposed_zero)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="benchmarks/distributed.py's JSON: its 1-rank step and "
                        "optimizer times replace the README's rates")
    parser.add_argument("--rank-speedup", type=float, default=1.0, help="ranks this many times faster than measured")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--bucket-mb", type=float, default=4.0)
    args = parser.parse_args()
    inputs = {}
    if args.source:
        with open(args.source) as f:
            for r in json.load(f)["results"]:
                if r["mode"] == "single":
                    inputs[r["model"]] = (r["step_s"], r["opt_s"], "measured 1-rank step")
    else:
        for case, rate in README_TOKENS_PER_S.items():
            inputs[case] = (layout_of(case, args.bucket_mb)[3] / rate, None, "README tokens/s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from harness import print_table
    rows = []
    for case, (step_s, opt_s, source) in inputs.items():
        step_s, opt_s = step_s / args.rank_speedup, opt_s / args.rank_speedup if opt_s is not None else None
        params, buckets, last, tokens = layout_of(case, args.bucket_mb)
        print(f"{case}: {params / 1e6:.2f}M parameters, {buckets} buckets of <= {args.bucket_mb} MiB (last "
              f"{4 * last / 1e6:.1f} MB), {tokens} tokens a micro-batch, step {step_s:.4f} s ({source}"
              f"{f' / {args.rank_speedup:g}' if args.rank_speedup != 1 else ''})"
              + (f", optimizer {opt_s:.4f} s" if opt_s is not None else ""))
        for interconnect in INTERCONNECTS:
            rows += [project(case, step_s, opt_s, n, interconnect, args.grad_accum, args.bucket_mb) for n in RANKS]
    print(f"\nweak scaling, grad_accum {args.grad_accum}; efficiency = step time alone / step time on N ranks\n")
    columns = [("model", "model", "{}"), ("interconnect", "interconnect", "{}"), ("ranks", "N", "{}"),
               ("allreduce_ms", "all-reduce ms", "{:.1f}"), ("eff_sync", "E no overlap", "{:.1%}"),
               ("eff_overlap", "E overlap", "{:.1%}")]
    if any("eff_zero" in r for r in rows):
        columns.append(("eff_zero", "E ZeRO-1", "{:.1%}"))
    print_table(rows, columns)
    assert all(math.isfinite(r["eff_sync"]) for r in rows)
    volume_table(inputs, args.rank_speedup)


def volume_table(inputs, rank_speedup):
    """Bytes each rank sends per step against model size, and the ratio of the all-reduce's
    bandwidth time to compute when compute is 6 P FLOPs a token at the FLOP rate llama-15m's
    measured step implies (an assumption for the larger sizes): 8 F / (6 tokens beta) at large N,
    whatever P is."""
    if "llama-15m" not in inputs:
        return
    step_s, opt_s, _ = inputs["llama-15m"]
    params, _, _, tokens = layout_of("llama-15m", 4.0)
    flops = 6 * params * tokens / (step_s / rank_speedup)
    print(f"\ncommunication per step against model size (N = 64; all-reduce sends 2 (N - 1) / N * 4P bytes a rank); "
          f"compute 6 P FLOPs a token at {flops / 1e9:.0f} GFLOP/s a rank (llama-15m's rate), {tokens} tokens a rank")
    rows = []
    for name, p in (("shakespeare-char", 0.81e6), ("llama-15m", 15.2e6), ("gpt2-124m", 124e6), ("1.3B", 1.3e9),
                    ("7B", 7e9)):
        sent = 2 * 63 / 64 * 4 * p
        row = {"model": name, "params": p / 1e6, "sent_mb": sent / 1e6, "compute_s": 6 * p * tokens / flops}
        for label, (beta, _) in INTERCONNECTS.items():
            row[label] = sent / beta / row["compute_s"]
        rows.append(row)
    from harness import print_table
    print_table(rows, [("model", "model", "{}"), ("params", "params (M)", "{:,.1f}"),
                       ("sent_mb", "MB sent a rank", "{:,.1f}"), ("compute_s", "compute s", "{:.3f}")]
                + [(label, f"comm/compute {label.split(' (')[0]}", "{:.3f}") for label in INTERCONNECTS])


if __name__ == "__main__":
    main()
