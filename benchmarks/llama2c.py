"""Decode at batch 1 against llama2.c's run.c: the same weights, the same threads, the same tokens.

    python benchmarks/llama2c.py --run /path/to/llama2.c/run [--threads 2] [--tokens 256] [--repeats 5]
    LLAMA2C_RUN=/path/to/run python benchmarks/llama2c.py

For each of llama-15m and llama-110m (llama2.c's stories15M / stories110M dimensions) this writes a
llama2.c checkpoint with random weights (the legacy format run.c reads: a header of 7 int32, then
float32 weights in run.c's order, the classifier shared when vocab_size is positive) and a
tokenizer.bin whose pieces are "[id]", so run.c's output can be read back into token ids. The same
weights go into a DecoderLM (wq and wk rows permuted: run.c rotates adjacent pairs, minillm rotates
halves, which is the same rotation once the rows are ordered alike). Then, interleaved with a pause
for the other side's threads to settle, `run model.bin -t 0 -n N` (greedy, from BOS) and minillm's
`generate(model, [[BOS]], N, temperature=0)` are timed; both count the tokens/s of the N - 1 forwards
after the first, as run.c does. The greedy tokens of both are compared (random weights make ties
rare; a float-rounding flip late in a sequence is reported, not an error). Medians of --repeats.

With --quantized, minillm's int8 and q4_0 models (quantize_model on the same weights) are timed in
the same rounds; their ratios are to our float32.

Build run.c (outside this repository; it is llama2.c's, MIT):
    git clone https://github.com/karpathy/llama2.c && cd llama2.c
    gcc -Ofast -march=native -fopenmp run.c -lm -o run

Writes benchmarks/results/llama2c.json.
"""
import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm.generate import generate  # noqa: E402
from minillm.models import DecoderLM, ModelConfig, load_preset  # noqa: E402
from minillm.nn.quantized import quantize_model  # noqa: E402

BOS = 1
BUILD_HINT = __doc__[__doc__.index("Build run.c"):__doc__.index("Writes")].rstrip()


def halves_to_pairs(w, n_heads):
    """Reorder the rows of a q or k projection (n_heads * D, C) from rotate-half order (row i pairs
    with i + D/2 in each head) to interleaved order (row 2i pairs with 2i + 1), as run.c rotates."""
    out, C = w.shape
    D = out // n_heads
    heads = w.reshape(n_heads, 2, D // 2, C)               # [head, half, i, :]
    return heads.transpose(0, 2, 1, 3).reshape(out, C)     # [head, i, half, :] -> rows 2i, 2i + 1


def write_llama2c_checkpoint(path, model):
    """model (a Llama-flavoured DecoderLM, tied head) -> llama2.c's legacy checkpoint at path."""
    c = model.config
    H, Hkv = c.n_head, c.n_kv_head or c.n_head
    blocks = list(model.blocks)

    def stacked(get):
        return np.stack([np.asarray(get(b), dtype=np.float32) for b in blocks])

    arrays = [model.wte.weight.data,
              stacked(lambda b: b.norm1.weight.data),
              stacked(lambda b: halves_to_pairs(b.attn.wq.weight.data, H)),
              stacked(lambda b: halves_to_pairs(b.attn.wk.weight.data, Hkv)),
              stacked(lambda b: b.attn.wv.weight.data),
              stacked(lambda b: b.attn.wo.weight.data),
              stacked(lambda b: b.norm2.weight.data),
              stacked(lambda b: b.ffn.w_gate.data),        # w1
              stacked(lambda b: b.ffn.w_down.data),        # w2
              stacked(lambda b: b.ffn.w_up.data),          # w3
              model.norm_f.weight.data,
              np.zeros(c.block_size * (c.n_embd // H), np.float32)]   # the unused freq_cis tables
    with open(path, "wb") as f:
        f.write(struct.pack("7i", c.n_embd, c.hidden_size, c.n_layer, H, Hkv, c.vocab_size, c.block_size))
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())


def write_tokenizer(path, vocab_size):
    """tokenizer.bin: max_token_length, then per token (score float32, length int32, bytes) "[id]"."""
    pieces = [f"[{i}]".encode() for i in range(vocab_size)]
    with open(path, "wb") as f:
        f.write(struct.pack("i", max(len(p) for p in pieces)))
        for i, p in enumerate(pieces):
            f.write(struct.pack("fi", 0.0, len(p)) + p)


def make_model(name, seed=0):
    """The preset's dims with random weights; the BOS row of the tied table is zeroed, so BOS (which
    ends run.c's generation) is never the greedy choice (its logit is 0, the maximum is > 0)."""
    config = ModelConfig(**load_preset(name)["model"])
    if config.positions != "rope" or not config.tie_embeddings or config.bias or config.norm != "rmsnorm":
        raise ValueError(f"{name}: run.c runs Llama-flavoured models with a tied head only")
    model = DecoderLM(config, rng=np.random.default_rng(seed)).eval()
    model.wte.weight.data[BOS] = 0.0
    return model


def time_run_c(binary, checkpoint, tokenizer, tokens, threads):
    """(tokens/s as run.c reports it, the greedy token ids it printed)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([binary, checkpoint, "-z", tokenizer, "-t", "0", "-n", str(tokens)],
                            capture_output=True, text=True, env=env, check=True)
    rate = re.search(r"achieved tok/s: ([0-9.]+)", result.stderr)
    if rate is None:
        raise RuntimeError(f"run.c printed no tok/s; stderr: {result.stderr[-300:]}")
    return float(rate.group(1)), [int(t) for t in re.findall(r"\[(\d+)\]", result.stdout)]


def time_ours(model, tokens):
    """(tokens/s over the tokens - 1 forwards after the first token, as run.c counts, the ids)."""
    first = []                                  # when the first token was chosen (after the prefill)

    def on_token(row, token):
        if not first:
            first.append(time.perf_counter())

    out = generate(model, [[BOS]], tokens, temperature=0, on_token=on_token)
    return (len(out[0]) - 1) / (time.perf_counter() - first[0]), out[0]


def agreement(a, b):
    """How many leading tokens two greedy sequences share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=os.environ.get("LLAMA2C_RUN"), help="llama2.c's built run binary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="run.c's -n: positions 0 .. N-1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause before each timing")
    parser.add_argument("--models", default="llama-15m,llama-110m")
    parser.add_argument("--quantized", action="store_true", help="also time our int8 and q4_0 models")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "llama2c.json"))
    args = parser.parse_args()
    if not args.run or not os.path.isfile(args.run):
        print("benchmarks/llama2c.py needs llama2.c's run binary (--run PATH or LLAMA2C_RUN); none given"
              + (f" ({args.run} is not a file)" if args.run else "") + ".\n\n" + BUILD_HINT)
        return 0
    minillm.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = make_model(name)
            tokens = min(args.tokens, model.config.block_size)
            checkpoint, tokenizer = os.path.join(tmp, f"{name}.bin"), os.path.join(tmp, "tokenizer.bin")
            write_llama2c_checkpoint(checkpoint, model)
            write_tokenizer(tokenizer, model.config.vocab_size)
            runs = {"run.c": lambda: time_run_c(args.run, checkpoint, tokenizer, tokens, args.threads),
                    "ours": lambda: time_ours(model, tokens)}
            if args.quantized:
                for scheme in ("int8", "q4_0"):
                    q = quantize_model(make_model(name), scheme)
                    runs[scheme] = lambda q=q: time_ours(q, tokens)
            for fn in runs.values():            # warm-up: page in the weights, start the thread pools
                fn()
            rates, ids = {k: [] for k in runs}, {}
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    time.sleep(args.settle)     # let the other side's spinning OpenMP threads go idle
                    rate, ids[key] = fn()
                    rates[key].append(rate)
            med = {k: statistics.median(v) for k, v in rates.items()}
            row = dict(model=name, params=f"{model.num_parameters() / 1e6:.1f}M", tokens=tokens,
                       runc_tok_s=med["run.c"], ours_tok_s=med["ours"], ratio=med["ours"] / med["run.c"],
                       same_tokens=agreement(ids["run.c"], ids["ours"]), of_tokens=len(ids["ours"]))
            for scheme in ("int8", "q4_0"):
                if scheme in med:
                    row[f"{scheme}_tok_s"], row[f"{scheme}_x_f32"] = med[scheme], med[scheme] / med["ours"]
            rows.append(row)
    info = machine_info()
    print(f"{info['cpu']}, threads {args.threads}, SIMD {info['minillm'].get('simd')}; batch 1, greedy from BOS, "
          f"random weights; tok/s over the N - 1 forwards after the first (run.c's count); "
          f"ratio = our tok/s / run.c's\n")
    columns = [("model", "model", "{}"), ("params", "params", "{}"), ("tokens", "N", "{}"),
               ("runc_tok_s", "run.c tok/s", "{:.1f}"), ("ours_tok_s", "ours tok/s", "{:.1f}"),
               ("ratio", "x run.c", "{:.2f}"), ("same_tokens", "same greedy tokens", "{}"),
               ("of_tokens", "of", "{}")]
    if args.quantized:
        columns += [("int8_tok_s", "int8 tok/s", "{:.1f}"), ("int8_x_f32", "int8 x f32", "{:.2f}"),
                    ("q4_0_tok_s", "q4_0 tok/s", "{:.1f}"), ("q4_0_x_f32", "q4_0 x f32", "{:.2f}")]
    print_table(rows, columns)
    write_json(args.out, {"machine": info, "threads": args.threads, "repeats": args.repeats,
                          "run_binary": os.path.abspath(args.run), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
