"""Scaling laws: exact parameter and FLOP counts, Kaplan and Chinchilla fits, compute-optimal plans,
a sweep runner and its plots (docs/scaling.md).

    counts.py  parameters of a config (total, non-embedding, active), FLOPs per token, MFU
    laws.py    the Chinchilla and Kaplan laws, published coefficients, the compute-optimal plan
    fits.py    fitting both laws to runs, bootstrap intervals
    sweep.py   training a grid of small models, results.jsonl, fit.json
    plots.py   loss vs compute with the frontier, IsoFLOP curves, fitted vs observed (matplotlib)
    cli.py     `minillm scaling count | sweep | fit | plan`
"""
from .counts import (count_parameters, counts, flops_per_token, kaplan_n, measure_matmul_peak, mfu)
from .fits import fit_chinchilla, fit_kaplan, fit_power_law
from .laws import PUBLISHED_CHINCHILLA, PUBLISHED_KAPLAN, ChinchillaLaw, KaplanLaw, load_law, plan

__all__ = ["ChinchillaLaw", "KaplanLaw", "PUBLISHED_CHINCHILLA", "PUBLISHED_KAPLAN", "count_parameters", "counts",
           "fit_chinchilla", "fit_kaplan", "fit_power_law", "flops_per_token", "kaplan_n", "load_law",
           "measure_matmul_peak", "mfu", "plan"]
