"""Load on `minillm serve`, on loopback: throughput and latency with 1, 4, 16 and 64 concurrent
streaming clients, against the same model served one request at a time and (when it is built here)
llama.cpp's `llama-server`; an overload run against a bounded queue; a soak with random disconnects
in which every completed answer is checked.

Each server runs in its own process (`python -m minillm serve`, or `llama-server`), so the clients
here do not share its interpreter. Each client sends requests one after another, a mix of prompt
lengths and max_tokens, greedy, and streams the answer: time to first token (TTFT, from sending to
the first text), inter-token latency (ITL, the gaps between streamed pieces; pieces can arrive in
bursts) and time per output token (TPOT, a request's decode time over its tokens after the first) at
p50/p95/p99, total generated tokens per second. Baselines: the same server with --max-batch 1 (requests queue and run
one at a time), and llama-server with as many slots as the batched server has places
(--llama-server PATH, a GGUF model only). Overload: --overload-clients clients against a server
admitting --max-batch requests and queueing at most --overload-queue more: the rest get HTTP 429
with Retry-After and retry after it, so TTFT of admitted requests stays bounded by the queue (queueing,
not collapse). The soak sends --soak requests from 16 clients, hangs up on a random share of them
after a few pieces, checks each answer it read to the end against the model's answer to the same
prompt alone, and reads /metrics to check that the server holds no KV block afterwards.

    python benchmarks/serve.py                       # a tiny random model made here
    python benchmarks/serve.py --model smollm2-135m-instruct --clients 1,4,16 --llama-server PATH
    python benchmarks/serve.py --quick               # seconds: checks that it runs
    python benchmarks/serve.py --plot                # also benchmarks/results/serve.png

Run nothing else meanwhile (benchmarks/harness.py says why); results go to benchmarks/results/serve.json.
"""
import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import machine_info  # noqa: E402
from minillm.files import write_json  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly bard".split()


def prompt_mix(rng, n):
    """(prompt, max_tokens) pairs: prompts of 1 to 10 words, answers of 8 to 48 tokens (the tiny model's
    context is 128 characters)."""
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 6, 10]))), rng.choice([8, 16, 32, 48]))
            for _ in range(n)]


# ---- the servers, each in its own process

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(command, port, log_path, timeout=300):
    """Run command (a server listening on port) while the block runs; yields the base URL once
    GET /health answers 200."""
    import httpx
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": ROOT})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not get ready in {timeout} s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
        if process.poll() is None:
            process.kill()


def minillm_server(source, max_batch, kv_blocks, threads, log_dir, max_queue=10_000):
    port = free_port()
    command = [sys.executable, "-m", "minillm", "serve", "--model", f"m={source}", "--port", str(port),
               "--max-batch", str(max_batch), "--kv-blocks", str(kv_blocks), "--max-queue", str(max_queue),
               "--threads", str(threads)]
    return server_process(command, port, os.path.join(log_dir, f"minillm-b{max_batch}-q{max_queue}.log"))


def llama_server(binary, gguf, slots, context, threads, log_dir):
    port = free_port()
    command = [binary, "-m", gguf, "--port", str(port), "--host", "127.0.0.1", "-np", str(slots),
               "-c", str(context * slots), "-t", str(threads), "-tb", str(threads), "--cont-batching",
               "--no-webui"]
    return server_process(command, port, os.path.join(log_dir, "llama-server.log"))


def tiny_model_checkpoint(directory):
    """The benchmark's default model, a tiny random decoder, saved where `minillm serve` can load it."""
    from minillm.checkpoint import save_checkpoint
    from serve_helpers import tiny_model
    model, tokenizer = tiny_model(n_embd=64, n_layer=4)
    save_checkpoint(directory, model, tokenizer, state={"step": 0})
    return directory


# ---- the clients

async def one_request(client, url, prompt, max_tokens, hang_up_after=None, retry_429=False):
    """Stream one completion: {"status", "ttft", "gaps", "tokens", "text", "complete", "refused"}. With
    retry_429 a 429 answer is retried after its Retry-After (TTFT still counts from the first send). A
    connection the server closed under a kept-alive request (llama-server's HTTP library does so after
    a few requests) is opened again and the request sent again, at most 3 times."""
    import httpx
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent, refused, reconnects = time.perf_counter(), 0, 0
    while True:
        try:
            async with client.stream("POST", url + "/v1/completions", json=body) as response:
                if response.status_code == 429 and retry_429:
                    refused += 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", 1)))
                    continue
                if response.status_code != 200:
                    return {"status": response.status_code, "complete": False, "refused": refused}
                return {**await read_stream(response, sent, hang_up_after), "refused": refused}
        except httpx.RemoteProtocolError:
            reconnects += 1
            if reconnects > 3:
                raise


async def read_stream(response, sent, hang_up_after):
    """The streamed pieces of one answer: timings, text and token count (hanging up after
    hang_up_after pieces when given)."""
    first, last, gaps, text, tokens, pieces = None, None, [], "", None, 0
    async for line in response.aiter_lines():
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            now = time.perf_counter()
            if choice.get("text"):
                first = first or now
                if last is not None:
                    gaps.append(now - last)
                last = now
                text += choice["text"]
                pieces += 1
        if hang_up_after is not None and pieces >= hang_up_after:
            return {"complete": False, "text": text}
    tokens = tokens if tokens is not None else pieces
    tpot = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return {"status": 200, "ttft": (first or time.perf_counter()) - sent, "gaps": gaps, "tpot": tpot,
            "tokens": tokens, "text": text, "complete": True}


def summary(results, seconds):
    ttft = [r["ttft"] for r in results if r["complete"]]
    gaps = [g for r in results if r["complete"] for g in r["gaps"]]
    tpot = [r["tpot"] for r in results if r["complete"] and r["tpot"] is not None]
    tokens = sum(r.get("tokens", 0) for r in results if r["complete"])
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {"requests": len(results), "failed": sum(not r["complete"] for r in results),
            "refused_429": sum(r.get("refused", 0) for r in results), "seconds": seconds,
            "tokens_per_s": tokens / seconds, **{f"ttft_p{q}": pct(ttft, q) for q in (50, 95, 99)},
            **{f"itl_p{q}": pct(gaps, q) for q in (50, 95, 99)},
            **{f"tpot_p{q}": pct(tpot, q) for q in (50, 95, 99)}}


async def load(url, clients, per_client, seed, retry_429=False, min_requests=32):
    """clients streaming clients, each sending max(per_client, min_requests / clients) requests one
    after another (so a run with few clients still times a few thousand tokens)."""
    import httpx
    per_client = max(per_client, -(-min_requests // clients))
    rng = random.Random(seed)
    work = [prompt_mix(rng, per_client) for _ in range(clients)]
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def run(items):
            return [await one_request(client, url, p, m, retry_429=retry_429) for p, m in items]
        await one_request(client, url, "warm up", 4)
        start = time.perf_counter()
        done = await asyncio.gather(*(run(items) for items in work))
        seconds = time.perf_counter() - start
    return {"clients": clients, **summary([r for rs in done for r in rs], seconds)}


async def kv_blocks_in_use(client, url):
    text = (await client.get(url + "/metrics")).text
    return int(float(re.search(r'^minillm_kv_blocks_in_use\{model="m"\} (\S+)$', text, re.M).group(1)))


async def soak(url, n, disconnect_share, seed):
    import httpx
    rng = random.Random(seed)
    items = prompt_mix(rng, 24)                      # few distinct prompts: answers are checked against them
    async with httpx.AsyncClient(timeout=900) as client:
        truth = {}
        for p, m in items:                           # each prompt's answer, alone
            answer = await one_request(client, url, p, m)
            if not answer["complete"]:
                raise RuntimeError(f"soak: the prompt {p!r} was refused (HTTP {answer.get('status')})")
            truth[(p, m)] = answer["text"]
        queue = [items[rng.randrange(len(items))] for _ in range(n)]
        wrong, complete, hung_up = [], 0, 0

        async def worker():
            nonlocal complete, hung_up
            while queue:
                p, m = queue.pop()
                hang = rng.randint(1, 4) if rng.random() < disconnect_share else None
                r = await one_request(client, url, p, m, hang)
                if r["complete"]:
                    complete += 1
                    if r["text"] != truth[(p, m)]:
                        wrong.append((p, m))
                else:
                    hung_up += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        seconds = time.perf_counter() - start
        deadline, held = time.monotonic() + 30, await kv_blocks_in_use(client, url)
        while held and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            held = await kv_blocks_in_use(client, url)
    return {"requests": n, "complete": complete, "hung_up": hung_up, "wrong": len(wrong),
            "blocks_in_use_after": held, "seconds": seconds}


# ---- the report

def print_row(label, row):
    print(f"{label:>16} clients {row['clients']:>3}: {row['tokens_per_s']:8.1f} tok/s  ttft p50 {row['ttft_p50']:.3f} "
          f"p99 {row['ttft_p99']:.3f} s  tpot p50 {row['tpot_p50'] or 0:.4f} p99 {row['tpot_p99'] or 0:.4f} s  "
          f"failed {row['failed']}  429s {row['refused_429']}", flush=True)


def plot(record, path):
    from minillm.plots import pyplot
    plt = pyplot()
    fig, (ax_tps, ax_ttft, ax_itl) = plt.subplots(1, 3, figsize=(14, 4))
    for key, style in (("batched", "o-"), ("one_at_a_time", "s--"), ("llama_server", "^-.")):
        rows = record.get(key) or []
        if not rows:
            continue
        x = [r["clients"] for r in rows]
        ax_tps.plot(x, [r["tokens_per_s"] for r in rows], style, label=key)
        for ax, metric in ((ax_ttft, "ttft"), (ax_itl, "tpot")):
            ax.plot(x, [r[f"{metric}_p50"] for r in rows], style, label=f"{key} p50")
            ax.plot(x, [r[f"{metric}_p99"] for r in rows], style, alpha=0.5, label=f"{key} p99")
    for ax, title in ((ax_tps, "generated tokens/s"), (ax_ttft, "time to first token (s)"),
                      (ax_itl, "time per output token (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streaming clients")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax_ttft.set_yscale("log")
    ax_itl.set_yscale("log")
    fig.suptitle(f"minillm serve, {record['model']}, {record['machine'].get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a source minillm loads (default: a tiny random model made here)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's places")
    ap.add_argument("--soak", type=int, default=2000, help="requests in the soak (0: none)")
    ap.add_argument("--disconnect-share", type=float, default=0.2)
    ap.add_argument("--kv-blocks", type=int, default=1024)
    ap.add_argument("--overload-clients", type=int, default=64, help="clients in the overload run (0: none)")
    ap.add_argument("--overload-queue", type=int, default=16, help="the overload server's --max-queue")
    ap.add_argument("--llama-server", help="a llama-server binary to compare with (needs a .gguf model)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="clients 1,4; 2 requests each; a soak of 40")
    ap.add_argument("--plot", action="store_true", help="write the latency plot beside --out")
    ap.add_argument("--out", default=os.path.join(RESULTS, "serve.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests_per_client, args.soak, args.overload_clients = "1,4", 2, 40, 8
        args.overload_queue = 2
    clients = [int(c) for c in args.clients.split(",")]
    scratch = tempfile.mkdtemp(prefix="minillm-bench-serve-")
    source = args.model or tiny_model_checkpoint(os.path.join(scratch, "tiny"))
    record = {"machine": machine_info(), "model": args.model or "tiny random (4 layers x 64)",
              "max_batch": args.max_batch, "threads": args.threads, "batched": [], "one_at_a_time": [],
              "llama_server": []}
    for key, max_batch in (("batched", args.max_batch), ("one_at_a_time", 1)):
        with minillm_server(source, max_batch, args.kv_blocks, args.threads, scratch) as url:
            for c in clients:
                row = asyncio.run(load(url, c, args.requests_per_client, seed=c))
                record[key].append(row)
                print_row(key, row)
            if key == "batched" and args.soak:
                record["soak"] = asyncio.run(soak(url, args.soak, args.disconnect_share, seed=0))
                print("soak:", record["soak"], flush=True)
    if args.overload_clients:
        with minillm_server(source, args.max_batch, args.kv_blocks, args.threads, scratch,
                            max_queue=args.overload_queue) as url:
            row = asyncio.run(load(url, args.overload_clients, args.requests_per_client, seed=7, retry_429=True))
            record["overload"] = {"max_batch": args.max_batch, "max_queue": args.overload_queue, **row}
            print_row("overload", row)
    if args.llama_server:
        from minillm.pretrained import source_kind
        kind, gguf = source_kind(args.model) if args.model else (None, None)
        if kind != "gguf":
            raise SystemExit("--llama-server needs --model naming a .gguf file or a packaged GGUF model")
        with llama_server(args.llama_server, str(gguf), args.max_batch, 2048, args.threads, scratch) as url:
            for c in clients:
                row = asyncio.run(load(url, c, args.requests_per_client, seed=c))
                record["llama_server"].append(row)
                print_row("llama-server", row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, record)
    if args.plot:
        print("wrote", plot(record, os.path.splitext(args.out)[0] + ".png"))


if __name__ == "__main__":
    main()
