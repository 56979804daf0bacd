"""The sweep's plots (PNG, matplotlib from the `plot` extra):

    loss_vs_compute.png   val loss against training compute C = 6 N D, one line per model size; the
                          observed frontier (the runs no run with less compute beats) and the fitted
                          law's compute-optimal frontier L(N_opt(C), D_opt(C))
    isoflop.png           IsoFLOP curves: the fitted L(N, C / 6N) against N at fixed C, with their
                          minima N_opt(C), and the runs whose compute is within a factor 1.5 of C
    fit_vs_observed.png   the Chinchilla fit's prediction against each run's loss, and Kaplan's L(N)
                          and L(D) lines through the runs they were fitted on
"""
import os

import numpy as np

from ..plots import pyplot, save_figure
from .fits import frontier
from .laws import ChinchillaLaw, KaplanLaw


def _arrays(records):
    N = np.array([r["params"] for r in records], dtype=float)
    D = np.array([r["tokens"] for r in records], dtype=float)
    L = np.array([r["val_loss"] for r in records], dtype=float)
    return N, D, L, 6 * N * D


def plot_loss_vs_compute(records, law, path):
    plt = pyplot()
    N, D, L, C = _arrays(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    sizes = np.unique(N)
    for k, n in enumerate(sizes):
        i = np.flatnonzero(N == n)
        i = i[np.argsort(C[i])]
        ax.plot(C[i], L[i], "o-", color=cmap(k / max(1, len(sizes) - 1)), label=f"N = {n / 1e6:.3g}M", ms=4)
    order = np.argsort(C)
    pareto = order[L[order] <= np.minimum.accumulate(L[order])]      # no run with less compute did better
    ax.plot(C[pareto], L[pareto], "k-", lw=2.5, alpha=0.3, label="observed frontier")
    grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 100)
    n_opt, d_opt = law.optimal(grid)
    ax.plot(grid, law.loss(n_opt, d_opt), "r--", label="fitted compute-optimal")
    ax.set(xscale="log", xlabel="training compute C = 6ND (FLOPs)", ylabel="val loss (nats/token)",
           title="Loss vs compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, path)


def plot_isoflop(records, law, path, levels=4):
    plt = pyplot()
    N, D, L, C = _arrays(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("plasma")
    budgets = np.logspace(np.log10(C.min()), np.log10(C.max()), levels)
    n_grid = np.logspace(np.log10(N.min()) - 0.5, np.log10(N.max()) + 0.5, 200)
    for k, c in enumerate(budgets):
        color = cmap(k / max(1, levels - 1) * 0.85)
        ax.plot(n_grid, law.loss(n_grid, c / (6 * n_grid)), color=color, label=f"C = {c:.2g}")
        n_opt, d_opt = law.optimal(c)
        ax.plot([n_opt], [law.loss(n_opt, d_opt)], "*", color=color, ms=11)
        near = np.abs(np.log(C / c)) <= np.log(1.5)
        ax.plot(N[near], L[near], "o", color=color, ms=5, mfc="none")
    ax.set(xscale="log", xlabel="parameters N", ylabel="val loss (nats/token)",
           title="IsoFLOP curves of the fitted law (stars: N_opt; circles: runs within 1.5x of C)")
    ax.set_ylim(min(L.min(), law.E) - 0.05, L.max() + 0.3)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, path)


def plot_fit_vs_observed(records, law, kaplan, path):
    plt = pyplot()
    N, D, L, _ = _arrays(records)
    N_ne = np.array([r["non_embedding_params"] for r in records], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    predicted = law.loss(N, D)
    ax = axes[0]
    ax.plot(L, predicted, "o", ms=4)
    lo, hi = min(L.min(), predicted.min()), max(L.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="observed val loss", ylabel="Chinchilla fit", title="Chinchilla: fitted vs observed")
    for ax, X, keys, a, xc, name in ((axes[1], N_ne, N_ne, kaplan.alpha_N, kaplan.N_c, "N (non-embedding)"),
                                     (axes[2], D, D, kaplan.alpha_D, kaplan.D_c, "D (tokens)")):
        ax.plot(X, L, "o", color="0.75", ms=4, label="all runs")
        i = frontier(keys, L)
        ax.plot(X[i], L[i], "o", ms=5, label="fitted on")
        if np.isfinite(a):
            grid = np.logspace(np.log10(X.min()), np.log10(X.max()), 50)
            ax.plot(grid, (xc / grid) ** a, "r--", label=f"(X_c / X)^{a:.3f}")
        ax.set(xscale="log", yscale="log", xlabel=name, ylabel="val loss", title=f"Kaplan L({name.split()[0]})")
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    return save_figure(fig, plt, path)


def plot_all(records, fit, out):
    """The three PNGs of a sweep into directory out; returns their paths."""
    law = ChinchillaLaw(**fit["chinchilla"]["law"])
    kaplan = KaplanLaw(**fit["kaplan"]["law"])
    return [plot_loss_vs_compute(records, law, os.path.join(out, "loss_vs_compute.png")),
            plot_isoflop(records, law, os.path.join(out, "isoflop.png")),
            plot_fit_vs_observed(records, law, kaplan, os.path.join(out, "fit_vs_observed.png"))]
