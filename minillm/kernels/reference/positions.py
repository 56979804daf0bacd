"""Fixed position tables: sinusoidal embeddings and ALiBi slopes."""
import math

import numpy as np


def sinusoidal_positions(T, C, dtype=np.float32):
    """PE[p, 2i] = sin(p / 10000^(2i/C)),  PE[p, 2i+1] = cos(p / 10000^(2i/C))   -> (T, C).

    As in "Attention Is All You Need"; for odd C the last column is a sine.
    """
    positions = np.arange(T, dtype=np.float64)[:, None]                      # (T, 1)
    inv_freq = 10000.0 ** (-np.arange(0, C, 2, dtype=np.float64) / C)        # (ceil(C/2),)
    table = np.zeros((T, C), dtype=np.float64)
    table[:, 0::2] = np.sin(positions * inv_freq)
    table[:, 1::2] = np.cos(positions * inv_freq[: C // 2])
    return table.astype(dtype)


def alibi_slopes(n_heads):
    """ALiBi's per-head slopes (Press et al. 2022): for n a power of two, 2^(-8 i / n), i = 1..n;
    otherwise those of the next lower power of two, then every other slope of twice that many.
    """
    def power_of_two_slopes(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    if n_heads <= 0:
        raise ValueError(f"alibi_slopes: n_heads must be positive, got {n_heads}")
    closest = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two_slopes(closest)
    if closest != n_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return np.array(slopes, dtype=np.float32)
