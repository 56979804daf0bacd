"""Routing between a small and a large model, measured on a task with checkable answers.

The task, made here: addition of numbers under 50, "a+b=" -> "c". Two character-level minillm models of
different sizes are trained briefly on it (the small one fewer layers, narrower, fewer steps), then
served by the engine (minillm/serve/). Quality is the share of exact answers on held-out problems;
cost is the mean tokens through each model per request, weighted by the model's parameter count
(tokens x parameters, relative to the large model alone), and the engines' wall time.

Compared: small only, large only, the cascade (escalate when the small answer's mean token
log-probability is under a threshold; the small model's cost is paid on every request) at several
thresholds, and the learned router (logistic classifier on the prompt's mean token embedding,
trained from the logged outcomes of the small model on other problems) calibrated to several
shares of large-model calls. Writes benchmarks/results/routing.json, routing.png (the cost-quality
curve) and router.json (for `minillm serve --route router --router ...`).

    python benchmarks/routing.py            # a few minutes
    python benchmarks/routing.py --quick    # a check that it runs (models barely trained)
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minillm.files import write_json  # noqa: E402
from minillm.models import DecoderLM, ModelConfig  # noqa: E402
from minillm.optim import AdamW  # noqa: E402
from minillm.serve import Engine, EngineConfig, SamplingParams  # noqa: E402
from minillm.serve.routing import LogisticRouter, mean_logprob  # noqa: E402
from minillm.serve.served import ServedModel  # noqa: E402
from minillm.tokenizers.char import CharTokenizer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOKENIZER = CharTokenizer(sorted("0123456789+=\n"))


def problems(rng, n):
    a, b = rng.integers(0, 50, n), rng.integers(0, 50, n)
    return [(f"{x}+{y}=", str(x + y)) for x, y in zip(a, b)]


def train(n_layer, n_embd, steps, seed, block=32, batch=32, lr=3e-3):
    """A character model of the problems' text ("a+b=c\\n" lines), trained for `steps` AdamW steps."""
    rng = np.random.default_rng(seed)
    text = "".join(p + a + "\n" for p, a in problems(rng, 20000))
    data = np.array(TOKENIZER.encode(text), dtype=np.int64)
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=n_layer, n_head=4, n_embd=n_embd,
                         norm="rmsnorm", activation="swiglu", positions="rope", bias=False)
    model = DecoderLM(config, rng=rng)
    opt = AdamW(model, lr=lr)
    for step in range(steps):
        starts = rng.integers(0, len(data) - block - 1, batch)
        x = np.stack([data[s:s + block] for s in starts])
        y = np.stack([data[s + 1:s + block + 1] for s in starts])
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
    print(f"trained {n_layer} layers x {n_embd}: {model.num_parameters()} parameters, loss {float(loss.data):.3f}")
    return model.eval()


def answer_all(served, items):
    """Greedy answers of one model to all problems through its engine: [(correct, mean logprob, tokens)]."""
    params = SamplingParams(max_tokens=4, temperature=0, stop=("\n",), logprobs=0)
    start = time.perf_counter()
    requests = served.engine.generate([served.prompt_ids(p) for p, _ in items], params)
    seconds = time.perf_counter() - start
    return [(r.text.strip() == a, mean_logprob(r), len(r.prompt_ids) + len(r.outputs))
            for r, (_, a) in zip(requests, items)], seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny training: only checks that it runs")
    ap.add_argument("--steps", default="2500,3000", help="training steps of the small and the large model")
    ap.add_argument("--small", default="2,32", help="layers,width of the small model (the large: 2,64)")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    steps_small, steps_large = (20, 40) if args.quick else map(int, args.steps.split(","))
    n_log, n_test = (64, 64) if args.quick else (400, 400)
    config = EngineConfig(num_blocks=1024, block_size=8, max_batch=64, max_step_tokens=512)
    small_layers, small_width = map(int, args.small.split(","))
    small = ServedModel("small", train(small_layers, small_width, steps_small, seed=1), TOKENIZER, config)
    large = ServedModel("large", train(2, 64, steps_large, seed=2), TOKENIZER, config)
    rng = np.random.default_rng(123)
    log_items, test_items = problems(rng, n_log), problems(rng, n_test)

    # the logged outcomes: which problems the small model got wrong (the router's labels)
    logged, _ = answer_all(small, log_items)
    X_log = np.stack([small.prompt_embedding(small.prompt_ids(p)) for p, _ in log_items])
    y_log = np.array([0.0 if ok else 1.0 for ok, _, _ in logged])
    router = LogisticRouter().fit(X_log, y_log) if 0 < y_log.sum() < len(y_log) else None

    s_out, s_time = answer_all(small, test_items)
    l_out, l_time = answer_all(large, test_items)
    ps, pl = small.model.num_parameters(), large.model.num_parameters()
    base = np.mean([t for _, _, t in l_out]) * pl                     # cost of large only
    ok_s, ok_l = np.array([o[0] for o in s_out]), np.array([o[0] for o in l_out])
    lp_s = np.array([o[1] for o in s_out])
    tok_s, tok_l = np.array([o[2] for o in s_out]), np.array([o[2] for o in l_out])

    def point(name, use_large, cascade):
        quality = float(np.mean(np.where(use_large, ok_l, ok_s)))
        cost = tok_l * pl * use_large + tok_s * ps * (1 if cascade else ~use_large)
        seconds = (s_time if cascade else s_time * np.mean(~use_large)) + l_time * np.mean(use_large)
        return {"policy": name, "large_share": float(np.mean(use_large)), "quality": quality,
                "cost": float(np.mean(cost) / base), "seconds": float(seconds)}

    rows = [point("small only", np.zeros(n_test, bool), False), point("large only", np.ones(n_test, bool), False)]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        threshold = float(np.quantile(lp_s, q))
        rows.append(dict(point(f"cascade lp<{threshold:.2f}", lp_s < threshold, True), threshold=threshold))
    X_test = np.stack([small.prompt_embedding(small.prompt_ids(p)) for p, _ in test_items])
    if router is not None:
        for share in (0.1, 0.25, 0.5, 0.75, 0.9):
            router.calibrate(X_log, share)
            use = np.array([router.use_large(x) for x in X_test])
            rows.append(dict(point(f"router {share:.0%}", use, False), threshold=router.threshold))
        router.calibrate(X_log, 0.5)
        os.makedirs(args.out, exist_ok=True)
        router.save(os.path.join(args.out, "router.json"))
    for r in rows:
        print(f"{r['policy']:>22}: quality {r['quality']:.3f}  cost {r['cost']:.3f}  large share "
              f"{r['large_share']:.2f}  {r['seconds']:.2f} s")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "routing.json"),
               {"quick": args.quick, "params": {"small": ps, "large": pl}, "test_problems": n_test, "rows": rows,
                "note": "cost: tokens x parameters per request, relative to the large model alone"})
    plot(rows, os.path.join(args.out, "routing.png"))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix, style in (("cascade", "o-"), ("router", "s-")):
        pts = sorted((r["cost"], r["quality"]) for r in rows if r["policy"].startswith(prefix))
        if pts:
            ax.plot(*zip(*pts), style, label=prefix)
    ends = rows[:2]                                   # small only, large only
    ax.plot([r["cost"] for r in ends], [r["quality"] for r in ends], "k--", alpha=0.4,
            label="random mix (no routing signal)")
    for r in ends:
        ax.plot(r["cost"], r["quality"], "k*", markersize=12)
        ax.annotate(r["policy"], (r["cost"], r["quality"]), textcoords="offset points", xytext=(5, -10))
    ax.set_xlabel("cost (tokens x parameters, large only = 1)")
    ax.set_ylabel("exact answers")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
