"""Rotary position embedding (RoPE), rotate-half convention (GPT-NeoX, Llama)."""
import numpy as np


def rope_angles(positions, head_dim, theta, dtype):
    """cos and sin of the rotation angles, each (..., T, D).

    Pair i (of D/2) of a vector at position p turns by angle p * theta^(-2i/D); the
    rotate-half layout pairs element i with element i + D/2, so each angle appears twice.
    positions: (T,) or (B, T) ints -> (T, D) or (B, 1, T, D), broadcastable against (B, H, T, D).
    """
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * inv_freq          # (..., T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)                               # (..., T, D)
    if angles.ndim == 3:
        angles = angles[:, None]                                                     # (B, 1, T, D)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1), halves along the last axis: multiplying by sin completes the rotation."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_forward(x, cos, sin):
    """y = x * cos + rotate_half(x) * sin   (each pair (x_i, x_{i+D/2}) rotated by its angle).

    Written half by half into one output, which is the same sum without the rotated copy."""
    h = x.shape[-1] // 2
    y = x * cos
    y[..., :h] -= x[..., h:] * sin[..., :h]
    y[..., h:] += x[..., :h] * sin[..., h:]
    return y


def rope_backward(dy, cos, sin):
    """A rotation's transpose is the rotation back:  dx = dy * cos + rotate_half^T(dy * sin),
    rotate_half^T(g1, g2) = (g2, -g1).
    """
    h = dy.shape[-1] // 2
    g = dy * sin
    dx = dy * cos
    dx[..., :h] += g[..., h:]
    dx[..., h:] -= g[..., :h]
    return dx
