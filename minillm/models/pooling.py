"""Sentence embeddings from an encoder's hidden states: pooling over the tokens, then (optionally)
L2 normalisation, as sentence-transformers' Pooling and Normalize modules do.

    cls:   h[first real token]                   (BERT's [CLS])
    mean:  sum_t m_t h_t / max(sum_t m_t, 1e-9)   (m: 1 on real tokens, 0 on padding)
    max:   max over real tokens of h_t
    mean_sqrt_len_tokens: sum_t m_t h_t / sqrt(sum_t m_t)
    lasttoken: h[last real token]
    normalise: e / max(||e||_2, 1e-12)

Several modes concatenate in the order above's POOLING_MODES (sentence-transformers' order). The
1_Pooling/config.json of a sentence-transformers model names them, either as "pooling_mode" or
with its older keys (pooling_mode_mean_tokens: true, ...); pooling_modes() reads both.
"""
import numpy as np

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
               "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_lasttoken": "lasttoken"}


def pooling_modes(config):
    """The modes a 1_Pooling/config.json (as a dict) asks for, as a tuple; ValueError for one minillm lacks."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(mode for key, mode in LEGACY_KEYS.items() if config.get(key))
        if config.get("pooling_mode_weightedmean_tokens"):
            modes += ("weightedmean",)
        modes = modes or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ValueError(f"pooling: mode {bad[0]!r} is not supported; minillm pools with {POOLING_MODES}")
    return modes


def pool(hidden, mask, modes=("mean",)):
    """hidden: (B, T, C) array, mask: (B, T) (1/True = real token) -> (B, len(modes) * C)."""
    hidden = np.asarray(hidden)
    mask = np.asarray(mask).astype(bool)
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"pool: hidden must be (B, T, C) and mask (B, T), got {hidden.shape} and {mask.shape}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    B, T, C = hidden.shape
    rows = np.arange(B)
    m = mask[..., None].astype(hidden.dtype)
    out = []
    for mode in POOLING_MODES:                       # sentence-transformers' concatenation order
        if mode not in modes:
            continue
        if mode == "cls":
            out.append(hidden[rows, np.argmax(mask, axis=1)])
        elif mode == "max":
            out.append(np.where(mask[..., None], hidden, -np.inf).max(axis=1))
        elif mode == "lasttoken":
            last = T - 1 - np.argmax(mask[:, ::-1], axis=1)
            out.append(hidden[rows, last] * mask[rows, last][:, None])
        else:
            total, count = (hidden * m).sum(axis=1), np.maximum(m.sum(axis=1), 1e-9)
            out.append(total / (count if mode == "mean" else np.sqrt(count)))
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        raise ValueError(f"pool: unknown mode {unknown[0]!r}; the modes are {POOLING_MODES}")
    return np.concatenate(out, axis=-1).astype(hidden.dtype, copy=False)


def l2_normalize(x, eps=1e-12):
    """x / max(||x||_2, eps) along the last axis (torch.nn.functional.normalize)."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_matrix(a, b=None):
    """The (N, M) cosine similarities of the rows of a and b (default: a with itself)."""
    a = l2_normalize(np.asarray(a, np.float64))
    b = a if b is None else l2_normalize(np.asarray(b, np.float64))
    return a @ b.T
