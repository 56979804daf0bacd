"""A scaling sweep: train a grid of small models (sizes x token budgets), record each run in
results.jsonl, and fit both laws to the results (fit.json).

Every run is a GPT-2-flavour character-level model like the shakespeare-char preset (learned
positions, LayerNorm, GELU, tied head, no dropout) with its own n_layer / n_embd / n_head, trained
with the existing Trainer for tokens = max_iters * batch_size * block_size tokens, with AdamW and a
cosine schedule that ends at the run's last step (each token budget gets its own schedule, as in
Hoffmann et al. 2022: a run cut short of its schedule overstates the loss). Its loss is then
measured exactly on the first eval_tokens tokens of the validation split, the same tokens for every
run, so runs compare without sampling noise.

results.jsonl gets one JSON line per finished run, written in a single append and flushed, so an
interrupted sweep keeps every finished run; rerunning the same command skips the runs whose key is
already in the file (a truncated last line is ignored, and that run is redone).

Grids. "quick" takes seconds (the tests and CI run it). "default" is 5 sizes x 4 budgets, about
15 minutes on 2 quiet cores (estimate_seconds prints the estimate before starting): sizes from 2 layers x
32 wide (~25k parameters) to 4 x 160 (~1.2M), budgets 0.25M to 2M tokens, i.e. up to ~2 epochs of
the ~1 MB built-in corpus. On so small a corpus L(D) stops following a power law once runs repeat
data; the fitted D exponents describe this corpus, not web text.
"""
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from .counts import count_parameters, flops_per_token, kaplan_n

GRIDS = {
    "quick": {"sizes": [(1, 16, 2), (2, 32, 4)], "tokens": [1024, 2048], "block_size": 32, "batch_size": 4,
              "eval_tokens": 2048},
    "default": {"sizes": [(2, 32, 2), (2, 64, 4), (3, 96, 4), (4, 128, 4), (4, 160, 4)],
                "tokens": [250_000, 500_000, 1_000_000, 2_000_000], "block_size": 64, "batch_size": 12,
                "eval_tokens": 65_536},
}
# For the duration estimate, fitted to step times measured on 2 quiet cores (40 steps of each
# default size): a step costs ~6 ms of overhead (Python, thread wake-ups) plus its FLOPs at
# ~85 GFLOP/s (7.8 ms/step at 30k parameters, 52 ms at 0.8M, 69 ms at 1.26M). A busy machine is
# slower, often much slower: OpenMP threads that share their cores with another process stall.
ESTIMATE_FLOPS_PER_S = 85e9
ESTIMATE_STEP_OVERHEAD_S = 0.006
ESTIMATE_RUN_SETUP_S = 1.0


def parse_sizes(text):
    """"2x32,4x128x4" -> [(2, 32, 2), (4, 128, 4)]: n_layer x n_embd [x n_head] (default heads: n_embd / 32,
    at least 1)."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3) or min(values) < 1:
            raise ValueError(f"--sizes: {item!r} is not LAYERSxWIDTH or LAYERSxWIDTHxHEADS (e.g. 4x128x4)")
        if len(values) == 2:
            values.append(max(1, values[1] // 32))
        if values[1] % values[2]:
            raise ValueError(f"--sizes: width {values[1]} of {item!r} is not a multiple of its {values[2]} heads")
        sizes.append(tuple(values))
    return sizes


def parse_numbers(text, what):
    """"250k,1M,2e6" -> [250000, 1000000, 2000000]."""
    out = []
    for item in text.split(","):
        s = item.strip().lower()
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(s[-1:], 1)
        try:
            value = float(s[:-1] if scale != 1 else s) * scale
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not a number (e.g. 250k, 1M, 2e6)") from None
        if not value > 0:
            raise ValueError(f"{what}: {item!r} must be positive")
        out.append(value)
    return out


def data_tag(data=None):
    """Names the training text in run keys: "shakespeare" (built-in) or the file's name and size."""
    if data is None:
        return "shakespeare"
    return f"{os.path.basename(data)}:{os.path.getsize(data) if os.path.exists(data) else 0}"


def run_specs(grid, vocab_size, seed=1337, lr=1e-3, data=None):
    """The runs of a grid: one dict per (size, token budget), with its key, model and train configs.

    The key names everything that changes the result (size, context, batch, steps, lr, seed, data),
    so a rerun with other settings into the same directory trains new runs instead of skipping."""
    from ..models import ModelConfig
    block, batch = grid["block_size"], grid["batch_size"]
    specs = []
    for n_layer, n_embd, n_head in grid["sizes"]:
        model = ModelConfig(vocab_size=vocab_size, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        for tokens in grid["tokens"]:
            iters = max(1, round(tokens / (batch * block)))
            train = dict(tokenizer="char", batch_size=batch, max_iters=iters, lr=lr, min_lr=lr / 10,
                         warmup_iters=max(1, min(100, iters // 10)), lr_decay_iters=iters, beta2=0.99,
                         eval_iters=0, eval_interval=iters, seed=seed, sample_tokens=0)
            key = f"L{n_layer}-C{n_embd}-H{n_head}-T{block}-B{batch}-I{iters}-lr{lr:g}-s{seed}-{data_tag(data)}"
            specs.append({"key": key, "model": model, "train": train, "tokens": iters * batch * block,
                          "eval_tokens": grid["eval_tokens"]})
    return specs


def estimate_seconds(spec):
    """A rough duration of one run on 2 cores (see the constants above): training steps plus the final
    evaluation (a forward pass, a third of a training step's FLOPs)."""
    fpt = flops_per_token(spec["model"], head=True)
    iters = spec["train"]["max_iters"]
    eval_batches = spec["eval_tokens"] / (32 * spec["model"].block_size)
    return (ESTIMATE_RUN_SETUP_S + iters * ESTIMATE_STEP_OVERHEAD_S + eval_batches * ESTIMATE_STEP_OVERHEAD_S
            + (spec["tokens"] + spec["eval_tokens"] / 3) * fpt / ESTIMATE_FLOPS_PER_S)


def read_results(path):
    """The records of a results.jsonl; lines that do not parse (an interrupted write) are skipped."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records


def append_result(path, record):
    """Append one JSON line in a single write, flushed to disk (after a newline if an interrupted
    write left the file without one, so the half line stays a line of its own)."""
    start = ""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            start = "" if f.read(1) == b"\n" else "\n"
    with open(path, "a") as f:
        f.write(start + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train_one(spec, data=None, peak=None, keep_dir=None):
    """Train one run with the Trainer; its results.jsonl record."""
    from ..train import TrainConfig, Trainer, evaluate_split
    config = spec["model"]
    out_dir = keep_dir or tempfile.mkdtemp(prefix="minillm-scaling-")
    try:
        trainer = Trainer(config, TrainConfig(**spec["train"]), out_dir, data, progress=False, log=lambda msg: None)
        result = trainer.run()
        val = trainer.data.splits["val"]
        eval_ids = val[: spec["eval_tokens"] + 1]
        val_loss = evaluate_split(trainer.model, eval_ids, batch_size=32)
    finally:
        if keep_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    tokens, seconds = spec["tokens"], result["seconds"]
    fpt = flops_per_token(config, head=True)
    params = count_parameters(config)
    record = {"key": spec["key"], "config": config.to_dict(), "train": spec["train"],
              "params": params, "non_embedding_params": count_parameters(config, exclude_embeddings=True),
              "kaplan_n": kaplan_n(config), "tokens": tokens, "iters": spec["train"]["max_iters"],
              "flops_per_token": fpt, "flops": fpt * tokens, "flops_6nd": 6 * params * tokens,
              "val_loss": val_loss, "eval_tokens": int(len(eval_ids) - 1),
              "train_loss": float(np.mean(result["step_losses"][-10:])), "seconds": seconds,
              "tokens_per_s": tokens / seconds, "flops_per_s": fpt * tokens / seconds}
    if peak:
        record.update(peak_flops_per_s=peak, mfu=fpt * tokens / seconds / peak)
    record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return record


def run_sweep(out, grid, data=None, seed=1337, lr=1e-3, peak=None, progress=True, keep_checkpoints=False,
              log=None):
    """Train every run of grid not yet in out/results.jsonl; returns (the grid's records, runs trained now)."""
    from ..data import build_tokenizer, read_text
    log = log or (lambda msg: print(msg, file=sys.stderr))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.jsonl")
    vocab_size = build_tokenizer("char", read_text(data)).vocab_size
    specs = run_specs(grid, vocab_size, seed, lr, data)
    done = {r["key"] for r in read_results(path)}
    todo = [s for s in specs if s["key"] not in done]
    estimate = sum(estimate_seconds(s) for s in todo)
    log(f"scaling sweep: {len(specs)} runs, {len(specs) - len(todo)} already in {path}, {len(todo)} to train; "
        f"estimated {estimate / 60:.1f} min on 2 cores")
    from tqdm import tqdm
    bar = tqdm(todo, desc="scaling sweep", unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(spec["key"])
        keep = os.path.join(out, "runs", spec["key"]) if keep_checkpoints else None
        if keep:
            shutil.rmtree(keep, ignore_errors=True)      # an interrupted run starts over
        record = train_one(spec, data, peak, keep)
        append_result(path, record)
        bar.set_postfix_str(f"{spec['key']} val {record['val_loss']:.3f}")
    bar.close()
    keys = {s["key"] for s in specs}
    return [r for r in read_results(path) if r["key"] in keys], len(todo)


def fit_results(records, n_boot=200, use_scipy=None, seed=0):
    """Both fits on a sweep's records: Chinchilla on (all parameters, tokens, val loss), Kaplan on
    (non-embedding parameters, tokens, val loss). A fit.json-ready dict."""
    from .fits import fit_chinchilla, fit_kaplan
    from .laws import PUBLISHED_CHINCHILLA, PUBLISHED_KAPLAN
    if len(records) < 2:
        raise ValueError(f"fit: needs at least 2 runs, got {len(records)}")
    if not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"fit: --n-boot must be an int >= 0 (0: no intervals), got {n_boot!r}")
    try:
        N = np.array([r["params"] for r in records], dtype=float)
        N_ne = np.array([r["non_embedding_params"] for r in records], dtype=float)
        D = np.array([r["tokens"] for r in records], dtype=float)
        L = np.array([r["val_loss"] for r in records], dtype=float)
    except (KeyError, TypeError) as error:
        raise ValueError(f"fit: a result record lacks {error}; expected params, non_embedding_params, tokens, "
                         "val_loss") from None
    chin = fit_chinchilla(N, D, L, n_boot=n_boot, use_scipy=use_scipy, seed=seed)
    kap = fit_kaplan(N_ne, D, L, n_boot=n_boot, seed=seed)
    return {"chinchilla": {**chin, "law": chin["law"].to_dict()}, "kaplan": {**kap, "law": kap["law"].to_dict()},
            "published": {"chinchilla": PUBLISHED_CHINCHILLA.to_dict(), "kaplan": PUBLISHED_KAPLAN.to_dict()},
            "n_runs": len(records), "n_boot": n_boot}


def format_runs(records):
    """One line per run: size, tokens, compute, loss, speed, MFU."""
    lines = [f"{'run':<54} {'params':>9} {'tokens':>10} {'C=6ND':>9} {'val loss':>8} {'tok/s':>8} {'MFU':>6}"]
    for r in sorted(records, key=lambda r: (r["params"], r["tokens"])):
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(f"{r['key']:<54} {r['params']:>9,} {r['tokens']:>10,} {r['flops_6nd']:>9.2e} "
                     f"{r['val_loss']:>8.4f} {r['tokens_per_s']:>8,.0f} {mfu:>6}")
    return "\n".join(lines)


def format_fit(fit):
    """The fitted coefficients with their 95% bootstrap intervals next to the published ones."""
    lines = [f"{'coefficient':<12} {'fitted':>11} {'95% interval':>25} {'published':>11}"]
    for law in ("chinchilla", "kaplan"):
        fitted, intervals, published = fit[law]["law"], fit[law].get("intervals", {}), fit["published"][law]
        lines.append(f"{law} ({fit[law]['n_runs']} runs)")
        for name, value in fitted.items():
            lo, hi = intervals.get(name, (float("nan"), float("nan")))
            interval = f"[{lo:.4g}, {hi:.4g}]" if intervals else "-"
            lines.append(f"  {name:<10} {value:>11.4g} {interval:>25} {published[name]:>11.4g}")
    return "\n".join(lines)
