"""Training plots from train_log.jsonl: the loss curve and, for MoE models, the expert load.

matplotlib is optional (the plot extra): pyplot() says how to install it when it is missing, and
save_figure() writes a PNG atomically. minillm/scaling/plots.py draws the scaling-law plots with
the same two helpers.
"""
import json
import os

import numpy as np

from .files import write_atomically


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window), or a RuntimeError saying how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'minillm[plot]'") from None
    return plt


def save_figure(fig, plt, path):
    """Write fig to path as a PNG, atomically, and close it. Returns path."""
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_losses(out_dir, path=None):
    """Draw train (per step) and eval losses from train_log.jsonl into a PNG (needs matplotlib)."""
    plt = pyplot()
    steps, loss, eval_steps, train_eval, val_eval = [], [], [], [], []
    with open(os.path.join(out_dir, "train_log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("eval"):
                eval_steps.append(r["step"]), train_eval.append(r["train"]), val_eval.append(r["val"])
            else:
                steps.append(r["step"]), loss.append(r["loss"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.6, label="train (batch)")
    ax.plot(eval_steps, train_eval, "o-", label="train (eval)")
    ax.plot(eval_steps, val_eval, "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    ax.grid(alpha=0.3)
    path = path or os.path.join(out_dir, "loss.png")
    return save_figure(fig, plt, path)


def plot_expert_load(out_dir, path=None):
    """Bar charts of the fraction of tokens (top-k assignments) per expert, one panel per MoE block,
    from the last record of train_log.jsonl that has an expert load (an eval record: the val
    batches; else a training step). Needs matplotlib; returns the PNG's path."""
    plt = pyplot()
    record = None
    with open(os.path.join(out_dir, "train_log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "expert_load" in r and (r.get("eval") or record is None or not record.get("eval")):
                record = r
    if record is None:
        raise ValueError(f"{out_dir}: train_log.jsonl has no expert load (is the model an MoE model?)")
    loads = np.asarray(record["expert_load"])                       # (MoE blocks, E)
    fig, axes = plt.subplots(1, len(loads), figsize=(2.6 * len(loads) + 1, 3), squeeze=False, sharey=True)
    for i, (ax, load) in enumerate(zip(axes[0], loads)):
        ax.bar(np.arange(len(load)), load)
        ax.axhline(1 / len(load), color="k", ls="--", lw=0.8)       # perfect balance
        ax.set_title(f"MoE layer {i}")
        ax.set_xlabel("expert")
        ax.set_xticks(np.arange(len(load)))
    axes[0][0].set_ylabel("fraction of assignments")
    where = "val batches" if record.get("eval") else "last training step"
    fig.suptitle(f"expert load at step {record['step']} ({where})", fontsize=10, y=1.04)
    path = path or os.path.join(out_dir, "expert_load.png")
    return save_figure(fig, plt, path)
