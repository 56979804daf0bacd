"""Fitting the laws of laws.py to runs (N, D, L), with bootstrap confidence intervals.

Chinchilla, as in Hoffmann et al. 2022, Appendix D.2: with theta = (a, b, e, alpha, beta),
A = exp(a), B = exp(b), E = exp(e), minimise over the runs i

    sum_i Huber_delta( LSE(a - alpha log N_i,  b - beta log D_i,  e) - log L_i ),   delta = 1e-3

(LSE = log-sum-exp, so LSE(...) = log(A/N^alpha + B/D^beta + E): the law's log-loss), with L-BFGS
started from a grid (alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25})
and the best local minimum kept. The objective is cheap, so it is evaluated on the whole grid at
once and L-BFGS runs from the `starts` best grid points rather than all 4,500 of them. With scipy
installed the optimiser is scipy.optimize.minimize(method="L-BFGS-B"); without it (or with
use_scipy=False) a small NumPy BFGS with a backtracking line search on the same analytic gradient.

Kaplan: log L = alpha (log X_c - log X) is a straight line in log-log, fitted by least squares.
Which runs: L(N) is the law of a model *not limited by data*, so for each model size we keep its
lowest-loss run (its largest token budget); L(D) is the law of data *not limited by model size*, so
for each token budget we keep the lowest-loss run (in practice the largest model). On a ~1 MB corpus
trained for a few epochs at most, L(D) flattens as D approaches the corpus size: its exponent is
then a lower bound, not the law.

Intervals: the fit is repeated on `n_boot` resamples of the runs (with replacement), and the
2.5th and 97.5th percentiles of each coefficient are reported.
"""
import itertools

import numpy as np

from .laws import ChinchillaLaw, KaplanLaw

HUBER_DELTA = 1e-3
GRID = {"alpha": np.arange(0, 2.01, 0.5), "beta": np.arange(0, 2.01, 0.5), "e": np.arange(-1, 1.01, 0.5),
        "a": np.arange(0, 25.1, 5), "b": np.arange(0, 25.1, 5)}


def scipy_available():
    try:
        import scipy.optimize  # noqa: F401
        return True
    except ImportError:
        return False


def _terms(theta, x, y):
    """The three log-terms (n, 3) for theta = (a, b, e, alpha, beta) (any leading batch dims)."""
    a, b, e, alpha, beta = (theta[..., k, None] for k in range(5))
    return np.stack([a - alpha * x, b - beta * y, np.broadcast_to(e, np.broadcast_shapes(e.shape, x.shape))], -1)


def _lse(t):
    m = t.max(-1, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(-1, keepdims=True)))[..., 0]


def huber(r, delta=HUBER_DELTA):
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def chinchilla_objective(theta, x, y, l, delta=HUBER_DELTA):
    """(sum of Huber losses, its gradient over theta) at theta; x = log N, y = log D, l = log L."""
    t = _terms(theta, x, y)
    lse = _lse(t)
    r = lse - l
    w = np.exp(t - lse[..., None])                       # softmax weights = d LSE / d term
    psi = np.clip(r, -delta, delta)                      # Huber'
    grad = np.array([np.sum(psi * w[:, 0]), np.sum(psi * w[:, 1]), np.sum(psi * w[:, 2]),
                     -np.sum(psi * w[:, 0] * x), -np.sum(psi * w[:, 1] * y)])
    return float(np.sum(huber(r, delta))), grad


def _bfgs(fun, x0, max_iter=1000, gtol=1e-12, ftol=1e-12):
    """Minimise fun (returning value, gradient) by BFGS with an Armijo backtracking line search."""
    x = np.asarray(x0, dtype=np.float64)
    f, g = fun(x)
    H, stalled = np.eye(len(x)), 0
    for _ in range(max_iter):
        p = -H @ g
        slope = g @ p
        if slope >= 0:                                   # not a descent direction: restart from the gradient
            H, p, slope = np.eye(len(x)), -g, -(g @ g)
        t = 1.0
        while True:
            f_new, g_new = fun(x + t * p)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-10:                                # no step lowers f: a (numerically) stationary point
                return x, f
        s, yk = t * p, g_new - g
        x, improvement, f, g = x + s, f - f_new, f_new, g_new
        sy = s @ yk
        if sy > 1e-16:
            rho = 1.0 / sy
            V = np.eye(len(x)) - rho * np.outer(s, yk)
            H = V @ H @ V.T + rho * np.outer(s, s)
        stalled = stalled + 1 if improvement <= ftol * max(abs(f), 1e-300) else 0
        if np.max(np.abs(g)) < gtol or stalled >= 3:
            break
    return x, f


def _minimize(fun, x0, use_scipy):
    if use_scipy:
        from scipy.optimize import minimize
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
        return res.x, float(res.fun)
    return _bfgs(fun, x0)


def _grid_starts(x, y, l, starts):
    grid = np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))
    values = huber(_lse(_terms(grid, x, y)) - l).sum(-1)
    return grid[np.argsort(values)[:starts]]


def _fit_theta(x, y, l, starts, use_scipy, init=None):
    candidates = [init] if init is not None else _grid_starts(x, y, l, starts)
    best = None
    for x0 in candidates:
        theta, value = _minimize(lambda th: chinchilla_objective(th, x, y, l), x0, use_scipy)
        if best is None or value < best[1]:
            best = (theta, value)
    return best


def _law(theta):
    a, b, e, alpha, beta = theta
    return ChinchillaLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                         beta=float(beta))


def _intervals(samples, keys):
    arr = np.asarray(samples)
    return {k: [float(np.percentile(arr[:, i], 2.5)), float(np.percentile(arr[:, i], 97.5))]
            for i, k in enumerate(keys)}


def _check(N, D, L, what):
    arrays = [np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"{what}: N, D and L must have the same length, got {[len(a) for a in arrays]}")
    if any(not np.all(np.isfinite(a) & (a > 0)) for a in arrays):
        raise ValueError(f"{what}: N, D and L must be positive and finite")
    return arrays


def fit_chinchilla(N, D, L, n_boot=0, starts=8, use_scipy=None, seed=0):
    """Fit L = E + A/N^alpha + B/D^beta to runs (Hoffmann et al. Appendix D.2, see the module docstring).

    Returns {"law": ChinchillaLaw, "objective", "n_runs", "optimizer", "intervals": {name: [lo, hi]}
    (with n_boot > 0)}. use_scipy=None: scipy when installed."""
    N, D, L = _check(N, D, L, "fit_chinchilla")
    if len(N) < 2:
        raise ValueError(f"fit_chinchilla: needs at least 2 runs, got {len(N)}")
    use_scipy = scipy_available() if use_scipy is None else use_scipy
    x, y, l = np.log(N), np.log(D), np.log(L)
    theta, value = _fit_theta(x, y, l, starts, use_scipy)
    result = {"law": _law(theta), "objective": value, "n_runs": len(N),
              "optimizer": "scipy L-BFGS-B" if use_scipy else "numpy BFGS"}
    if n_boot:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(n_boot):
            i = rng.integers(0, len(N), len(N))
            th, _ = _fit_theta(x[i], y[i], l[i], starts, use_scipy, init=theta)
            law = _law(th)
            samples.append([law.E, law.A, law.B, law.alpha, law.beta])
        result["intervals"] = _intervals(samples, ("E", "A", "B", "alpha", "beta"))
    return result


def fit_power_law(X, L):
    """(alpha, X_c) of L = (X_c / X)^alpha by least squares on log L = alpha log X_c - alpha log X."""
    X, L = np.log(np.asarray(X, dtype=np.float64)), np.log(np.asarray(L, dtype=np.float64))
    if len(np.unique(X)) < 2:
        raise ValueError("fit_power_law: needs at least 2 distinct sizes")
    slope, intercept = np.polyfit(X, L, 1)
    alpha = -slope
    with np.errstate(over="ignore", divide="ignore"):
        x_c = np.exp(intercept / alpha) if alpha != 0 else np.inf
    return float(alpha), float(x_c) if np.isfinite(x_c) else float("nan")   # nan: beyond float range


def frontier(keys, L):
    """Indices of the lowest loss for each distinct key (e.g. each model size)."""
    keys, L = np.asarray(keys), np.asarray(L)
    return np.array([np.flatnonzero(keys == k)[np.argmin(L[keys == k])] for k in np.unique(keys)])


def _kaplan_once(N, D, L):
    iN, iD = frontier(N, L), frontier(D, L)
    out = {}
    for name, idx, X in (("N", iN, N), ("D", iD, D)):
        try:
            out[name] = fit_power_law(X[idx], L[idx])
        except ValueError:
            out[name] = None
    return out


def fit_kaplan(N, D, L, n_boot=0, seed=0):
    """Fit Kaplan's L(N) and L(D) (N non-embedding parameters); see the module docstring for which runs.

    Returns {"law": KaplanLaw, "n_runs", "intervals" (with n_boot > 0)}; a law with fewer than two
    distinct sizes (or token budgets) gets NaN for its coefficients."""
    N, D, L = _check(N, D, L, "fit_kaplan")
    fit = _kaplan_once(N, D, L)
    nan = (float("nan"), float("nan"))
    (aN, Nc), (aD, Dc) = fit["N"] or nan, fit["D"] or nan
    result = {"law": KaplanLaw(alpha_N=aN, N_c=Nc, alpha_D=aD, D_c=Dc), "n_runs": len(N)}
    if n_boot:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(n_boot):
            i = rng.integers(0, len(N), len(N))
            f = _kaplan_once(N[i], D[i], L[i])
            samples.append([*(f["N"] or nan), *(f["D"] or nan)])
        samples = np.asarray(samples)
        result["intervals"] = {k: [float(np.nanpercentile(samples[:, j], 2.5)),
                                   float(np.nanpercentile(samples[:, j], 97.5))]
                               if np.any(np.isfinite(samples[:, j])) else [float("nan")] * 2
                               for j, k in enumerate(("alpha_N", "N_c", "alpha_D", "D_c"))}
    return result
