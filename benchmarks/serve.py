"""Load on `minillm serve`, on loopback: throughput and latency with 1, 4, 16 and 64 concurrent
streaming clients, against the same model served one request at a time, and a soak with random
disconnects in which every completed answer is checked.

Each client sends requests one after another, a mix of prompt lengths and max_tokens, greedy, and
streams the answer: time to first token (TTFT, from sending to the first text), inter-token latency
(ITL, the gaps between streamed pieces) at p50/p95/p99, total generated tokens per second. The
baseline is the same server with --max-batch 1 (requests queue and run one at a time). The soak sends
`--soak` requests from 16 clients, hangs up on a random share of them after a few pieces, and checks
each answer it read to the end against the model's answer to the same prompt alone; it also checks
that the server holds no KV block afterwards.

    python benchmarks/serve.py                       # a tiny random model made here
    python benchmarks/serve.py --model smollm2-135m-instruct --clients 1,4,16
    python benchmarks/serve.py --quick               # seconds: checks that it runs

Run nothing else meanwhile (benchmarks/harness.py says why); results go to benchmarks/results/serve.json.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from harness import machine_info  # noqa: E402
from minillm.files import write_json  # noqa: E402
from minillm.serve import EngineConfig  # noqa: E402
from minillm.serve.app import create_app  # noqa: E402
from minillm.serve.served import ServedModel  # noqa: E402
from serve_helpers import running_server, tiny_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly bard".split()


def prompt_mix(rng, n):
    """(prompt, max_tokens) pairs: prompts of 1 to 10 words, answers of 8 to 48 tokens (the tiny model's
    context is 128 characters)."""
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 6, 10]))), rng.choice([8, 16, 32, 48]))
            for _ in range(n)]


async def one_request(client, url, prompt, max_tokens, hang_up_after=None):
    """Stream one completion: {"ttft", "gaps", "tokens", "text", "complete"}."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first, last, gaps, text, tokens, pieces = None, None, [], "", 0, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "complete": False}
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                now = time.perf_counter()
                if choice["text"]:
                    first = first or now
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    text += choice["text"]
                    pieces += 1
            if hang_up_after is not None and pieces >= hang_up_after:
                return {"complete": False, "text": text}
    return {"status": 200, "ttft": (first or time.perf_counter()) - sent, "gaps": gaps, "tokens": tokens,
            "text": text, "complete": True}


async def load(url, clients, per_client, seed):
    import httpx
    rng = random.Random(seed)
    work = [prompt_mix(rng, per_client) for _ in range(clients)]
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def run(items):
            return [await one_request(client, url, p, m) for p, m in items]
        start = time.perf_counter()
        done = await asyncio.gather(*(run(items) for items in work))
        seconds = time.perf_counter() - start
    results = [r for rs in done for r in rs]
    ttft = [r["ttft"] for r in results if r["complete"]]
    gaps = [g for r in results if r["complete"] for g in r["gaps"]]
    tokens = sum(r.get("tokens", 0) for r in results)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {"clients": clients, "requests": len(results), "failed": sum(not r["complete"] for r in results),
            "seconds": seconds, "tokens_per_s": tokens / seconds,
            **{f"ttft_p{q}": pct(ttft, q) for q in (50, 95, 99)}, **{f"itl_p{q}": pct(gaps, q) for q in (50, 95, 99)}}


async def soak(url, state, n, disconnect_share, seed):
    import httpx
    rng = random.Random(seed)
    items = prompt_mix(rng, 24)                      # few distinct prompts: answers are checked against them
    async with httpx.AsyncClient(timeout=600) as client:
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
        await asyncio.gather(*(worker() for _ in range(16)))
    engine = next(iter(state.served.values())).engine
    deadline = time.monotonic() + 30
    while (engine.num_running or engine.blocks.num_used) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"requests": n, "complete": complete, "hung_up": hung_up, "wrong": len(wrong),
            "blocks_in_use_after": engine.blocks.num_used}


def serve(model, tokenizer, max_batch, kv_blocks):
    config = EngineConfig(num_blocks=kv_blocks, block_size=16, max_batch=max_batch, max_step_tokens=256)
    return create_app(lambda: {"m": ServedModel("m", model, tokenizer, config)}, max_queue=10_000)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a source minillm loads (default: a tiny random model made here)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--soak", type=int, default=2000, help="requests in the soak (0: none)")
    ap.add_argument("--disconnect-share", type=float, default=0.2)
    ap.add_argument("--kv-blocks", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="clients 1,4; 2 requests each; a soak of 40")
    ap.add_argument("--out", default=os.path.join(RESULTS, "serve.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests_per_client, args.soak = "1,4", 2, 40
    if args.model:
        from minillm.pretrained import load_pretrained
        model, tokenizer = load_pretrained(args.model)
    else:
        model, tokenizer = tiny_model(n_embd=64, n_layer=4)
    clients = [int(c) for c in args.clients.split(",")]
    record = {"machine": machine_info(), "model": args.model or "tiny random (4 layers x 64)", "batched": [],
              "one_at_a_time": []}
    for key, max_batch in (("batched", max(clients)), ("one_at_a_time", 1)):
        app = serve(model, tokenizer, max_batch, args.kv_blocks)
        with running_server(app) as url:
            for c in clients:
                row = asyncio.run(load(url, c, args.requests_per_client, seed=c))
                record[key].append(row)
                print(f"{key:>14} clients {c:>3}: {row['tokens_per_s']:8.1f} tok/s  ttft p50 {row['ttft_p50']:.3f} "
                      f"p99 {row['ttft_p99']:.3f} s  itl p50 {row['itl_p50'] or 0:.4f} s  failed {row['failed']}")
            if key == "batched" and args.soak:
                record["soak"] = asyncio.run(soak(url, app.state.minillm, args.soak, args.disconnect_share, seed=0))
                print("soak:", record["soak"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, record)


if __name__ == "__main__":
    main()
