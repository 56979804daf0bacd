"""Long-context attention: time and peak memory of forward+backward and of one decode step for dense
flash attention, a sliding window, dilated, block-sparse and linear attention at T = 1k ... 32k, and
the quality of each on a synthetic long-range task at the same training budget.

    python benchmarks/long_context.py               # T = 1k .. 32k, and the recall task
    python benchmarks/long_context.py --quick       # small T, a few steps: a smoke run
    python benchmarks/long_context.py --plot        # also benchmarks/results/long_context.png

Timing: median wall seconds of a few calls of the kernels (B = 1, H = 4, D = 64, causal), float32, on
the threads the machine gives (set --threads). Peak memory: tracemalloc's peak of the NumPy arrays
made during one forward+backward (the C++ kernels allocate their outputs as NumPy arrays; their small
scratch is not counted). Decode: one query against a cache of T keys (dense and sliding: the KV-cache
kernel in place; dilated, block-sparse: the sparse kernel over that query's keys; linear: one step of
the D x D state, the same at every T). "crosses dense at" is the first T where a method's time is
below dense flash attention's. Quality: associative recall (n key-value pairs, then a key: predict its
value), small models trained the same steps with each attention; accuracy on held-out sequences.
Writes benchmarks/results/long_context.json. Figures from a shared machine are not performance claims.
"""
import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
import minillm.functional as F  # noqa: E402
from minillm import kernels, nn  # noqa: E402
from minillm.functional.sparse_attention import elu_plus_one  # noqa: E402

H, D = 4, 64
SLIDING, DILATED = 256, dict(window=128, dilation=2)
BLOCK = dict(block=64, local_blocks=1, global_blocks=1, n_random=1)


def methods():
    return {
        "dense": None,
        "sliding": "window",
        "dilated": F.AttentionPattern("dilated", **DILATED),
        "block_sparse": F.AttentionPattern("block_sparse", **BLOCK),
        "linear": "linear",
    }


def fwd_bwd(name, spec, q, k, v, dout):
    """One forward and backward of the kernels of a method; returns nothing (timed and traced)."""
    if spec == "linear":
        fq, fk = elu_plus_one(q), elu_plus_one(k)
        out, den = kernels.linear_attention_forward(fq, fk, v)
        kernels.linear_attention_backward(dout, fq, fk, v, out, den)
    elif isinstance(spec, F.AttentionPattern):
        lists = spec.indices(q.shape[2], k.shape[2])
        out, lse = kernels.sparse_attention_forward(q, k, v, *lists)
        kernels.sparse_attention_backward(dout, q, k, v, out, lse, *lists)
    else:
        window = SLIDING if spec == "window" else None
        out, lse = kernels.attention_forward(q, k, v, True, window)
        kernels.attention_backward(dout, q, k, v, out, lse, True, window)


def decode_step(spec, T, rng):
    """A function running one decode step against a cache of T tokens."""
    q = rng.standard_normal((1, H, 1, D)).astype(np.float32)
    if spec == "linear":
        state = nn.LinearAttentionState(1, H, D)
        state.step(q, q, q)
        return lambda: nn.LinearAttentionState.step(state, q, q, q)
    k = rng.standard_normal((1, H, T, D)).astype(np.float32)
    if isinstance(spec, F.AttentionPattern):
        lists = spec.indices(1, T)
        return lambda: kernels.sparse_attention_forward(q, k, k, *lists)
    window = SLIDING if spec == "window" else None
    return lambda: kernels.kv_attention_forward(q, k, k, T, True, window)


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost_rows(lengths, repeats, max_dense):
    rng = np.random.default_rng(0)
    rows = []
    for T in lengths:
        q, k, v, dout = (rng.standard_normal((1, H, T, D)).astype(np.float32) for _ in range(4))
        for name, spec in methods().items():
            if name == "dense" and T > max_dense:
                rows.append({"T": T, "method": name, "note": f"skipped above T = {max_dense}"})
                continue
            tracemalloc.start()
            fwd_bwd(name, spec, q, k, v, dout)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append({"T": T, "method": name,
                         "train_s": median_time(lambda: fwd_bwd(name, spec, q, k, v, dout), repeats),
                         "train_peak_mib": peak / 2 ** 20,
                         "decode_ms": 1e3 * median_time(decode_step(spec, T, rng), repeats * 3)})
    return rows


def crossings(rows):
    """{method: the first T where its train time is below dense's}."""
    dense = {r["T"]: r["train_s"] for r in rows if r["method"] == "dense" and "train_s" in r}
    out = {}
    for r in rows:
        if r["method"] != "dense" and "train_s" in r and r["T"] in dense and r["train_s"] < dense[r["T"]]:
            out.setdefault(r["method"], r["T"])
    return out


def recall_batch(rng, batch, n_pairs, vocab):
    """Associative recall: k1 v1 k2 v2 ... kn vn q -> the value of key q. Keys from the first half of
    the vocabulary, values from the second. Returns x (B, 2n + 1) and the answers (B,)."""
    half = vocab // 2
    keys = np.stack([rng.choice(half, size=n_pairs, replace=False) for _ in range(batch)])
    values = rng.integers(half, vocab, size=(batch, n_pairs))
    x = np.empty((batch, 2 * n_pairs + 1), dtype=np.int64)
    x[:, 0:-1:2], x[:, 1:-1:2] = keys, values
    pick = rng.integers(0, n_pairs, size=batch)
    x[:, -1] = keys[np.arange(batch), pick]
    return x, values[np.arange(batch), pick]


def recall_quality(n_pairs, steps, vocab=None):
    """Accuracy of a 2-layer model per attention kind after `steps` AdamW steps on recall sequences
    (keys from the first half of the vocabulary, which must hold n_pairs distinct keys: 4 n_pairs)."""
    from minillm.models import DecoderLM, ModelConfig
    from minillm.optim import AdamW
    vocab = vocab or max(32, 4 * n_pairs)
    T = 2 * n_pairs + 1
    window = max(4, T // 4)
    kinds = {"dense": {}, "sliding": {"window": window},
             "dilated": {"attention_pattern": {"kind": "dilated", "window": window // 2, "dilation": 2}},
             "block_sparse": {"attention_pattern": {"kind": "block_sparse", "block": max(2, T // 8), "n_random": 1}},
             "linear": {"attention": "linear"}}
    rows = []
    for name, extra in kinds.items():
        config = ModelConfig(vocab_size=vocab, block_size=T, n_layer=2, n_head=2, n_embd=32, positions="rope",
                             norm="rmsnorm", activation="swiglu", bias=False, **extra)
        model = DecoderLM(config, rng=np.random.default_rng(0))
        optimizer = AdamW([{"params": dict(model.named_parameters()), "weight_decay": 0.0}], lr=3e-3)
        rng = np.random.default_rng(1)
        for _ in range(steps):
            x, answer = recall_batch(rng, 32, n_pairs, vocab)
            targets = np.full_like(x, -100)
            targets[:, -1] = answer
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        x, answer = recall_batch(np.random.default_rng(2), 256, n_pairs, vocab)
        accuracy = float(np.mean(model.infer(x)[:, -1].argmax(-1) == answer))
        rows.append({"method": name, "T": T, "steps": steps, "accuracy": accuracy})
    return rows


def plot(rows, path):
    from minillm.plots import pyplot, save_figure
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in methods():
        mine = [r for r in rows if r["method"] == name and "train_s" in r]
        T = [r["T"] for r in mine]
        for ax, key in zip(axes, ("train_s", "train_peak_mib", "decode_ms")):
            ax.plot(T, [r[key] for r in mine], "o-", label=name)
    for ax, title in zip(axes, ("forward+backward (s)", "peak memory fwd+bwd (MiB)", "decode step (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return save_figure(fig, plt, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 256, 512 and a few training steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-dense", type=int, default=32768, help="largest T for dense attention")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--recall-pairs", type=int, default=8, help="key-value pairs per recall sequence")
    parser.add_argument("--recall-steps", type=int, default=2000, help="training steps of each recall model")
    parser.add_argument("--only", choices=["costs", "quality"], help="run one half (the other is kept from the "
                                                                     "results file when it is there)")
    args = parser.parse_args()
    minillm.set_num_threads(args.threads)
    lengths = [256, 512] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    info = machine_info()
    print(f"minillm long-context attention, H = {H}, D = {D}, {args.threads} threads; {info.get('cpu', '')}")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "long_context.json")
    kept = {}
    if args.only and os.path.exists(out):
        with open(out) as f:
            kept = json.load(f)
    rows, cross, quality = kept.get("costs", []), kept.get("crossings", {}), kept.get("quality", [])
    if args.only != "quality":
        rows = cost_rows(lengths, 1 if args.quick else 3, args.max_dense)
        cross = crossings(rows)
    print_table(rows, [("T", "T", "{}"), ("method", "method", "{}"), ("train_s", "fwd+bwd s", "{:.4f}"),
                       ("train_peak_mib", "peak MiB", "{:.1f}"), ("decode_ms", "decode ms", "{:.3f}")])
    print("crosses dense flash attention (fwd+bwd) at:", cross or "none in this range")
    if args.only != "costs":
        quality = recall_quality(n_pairs=8 if args.quick else args.recall_pairs,
                                 steps=5 if args.quick else args.recall_steps)
    print_table(quality, [("method", "method", "{}"), ("T", "T", "{}"), ("steps", "steps", "{}"),
                          ("accuracy", "recall accuracy", "{:.3f}")])
    write_json(out, {"machine": info, "costs": rows, "crossings": cross, "quality": quality,
                     "quick": args.quick})
    if args.plot:
        print("plot:", plot(rows, os.path.join(os.path.dirname(out), "long_context.png")))


if __name__ == "__main__":
    main()
