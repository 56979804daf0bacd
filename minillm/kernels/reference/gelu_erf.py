"""GELU in its exact form (BERT's, torch's gelu(approximate="none")) and ReLU (T5's feed-forward).

    gelu(x) = x Phi(x),   Phi(x) = P(N(0, 1) <= x) = 0.5 erfc(-x / sqrt(2))

Phi is written with erfc rather than 0.5 (1 + erf(x / sqrt(2))): for x << 0 the sum 1 + erf cancels
and loses every digit, erfc does not. NumPy has no erf, so the reference maps Python's math.erfc
(correctly rounded to about an ulp of float64) over the array; it is the definition, not a fast path.
"""
import math

import numpy as np

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def normal_cdf(x):
    """Phi(x) = 0.5 erfc(-x / sqrt(2)), in float64."""
    return 0.5 * np.asarray(_erfc(-np.asarray(x, np.float64) * _SQRT_HALF), dtype=np.float64)


def gelu_erf_forward(x):
    """y = x Phi(x)."""
    with np.errstate(invalid="ignore"):                    # -inf * Phi(-inf) = -inf * 0 is NaN
        return np.asarray(x * normal_cdf(x)).astype(x.dtype, copy=False)


def gelu_erf_backward(dy, x):
    """dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)  (product rule; Phi' = phi)."""
    x64 = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        grad = normal_cdf(x64) + x64 * _INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)
    return np.asarray(dy * grad).astype(x.dtype, copy=False)


def relu_forward(x):
    """y = max(x, 0)."""
    return np.maximum(x, 0)


def relu_backward(dy, x):
    """dy/dx = 1 where x > 0, else 0 (the subgradient 0 at x = 0, as torch takes it)."""
    return dy * (x > 0)
