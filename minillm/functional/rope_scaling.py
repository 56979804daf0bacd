"""RoPE scaling: the inverse frequencies (and the attention factor) that stretch a trained context.

RoPE turns pair i of a head (i = 0 .. D/2 - 1) at position p by p * f_i, f_i = theta^(-2i/D). A model
trained on L positions has seen angles up to L f_i; the scalings below change f_i so longer contexts
stay inside (or near) what it has seen. The names and fields are Hugging Face's (`rope_scaling` /
`rope_parameters` in a config.json, `rope_type` or the older `type`):

- linear (position interpolation, Chen et al. 2023): f_i / s, i.e. position p acts as p / s.
- dynamic (NTK-aware, "dynamic NTK"): the base grows with the current length T > L:
      theta' = theta * (s T / L - (s - 1)) ^ (D / (D - 2)),   f_i = theta'^(-2i/D);  T <= L: unchanged.
- yarn (Peng et al. 2023): pair i blends interpolation f_i / s and extrapolation f_i by a ramp over
  the pairs: r(i) = clamp((i - lo) / (hi - lo), 0, 1), f'_i = f_i / s * r(i) + f_i * (1 - r(i)), where
  lo, hi are the pairs that turn beta_fast and beta_slow times over L positions,
      d(n) = D ln(L / (2 pi n)) / (2 ln theta),  lo = floor(d(beta_fast)), hi = ceil(d(beta_slow));
  cos and sin are multiplied by the attention factor 0.1 ln(s) + 1 (so the scores by its square).
- llama3 (Llama 3.1): wavelength w_i = 2 pi / f_i against the original context L:
      w_i < L / high_freq_factor: f_i;   w_i > L / low_freq_factor: f_i / s;
      between: (1 - a) f_i / s + a f_i,  a = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor).
- freq_factors (llama.cpp's rope_freqs tensor, how GGUF files carry Llama 3's scaling): one divisor per
  pair, f'_i = f_i / c_i. For llama3, c_i = f_i / f'_i of the formula above (llama3_freq_factors).

RopeScaling holds one of them, checked and hashable (the rope tables are cached by it).
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "freq_factors")


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None   # L, the trained context (dynamic, yarn, llama3)
    beta_fast: float = 32.0                                 # yarn
    beta_slow: float = 1.0
    attention_factor: float | None = None                   # yarn; None: 0.1 ln(factor) + 1
    mscale: float | None = None                             # yarn (DeepSeek's variant of the attention factor)
    mscale_all_dim: float | None = None
    truncate: bool = True                                   # yarn: floor/ceil the ramp's ends
    low_freq_factor: float = 1.0                            # llama3
    high_freq_factor: float = 4.0
    freq_factors: tuple | None = None                       # freq_factors: c_i, one per pair (D/2 of them)

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"RopeScaling: rope_type must be one of {list(ROPE_TYPES)}, got {self.rope_type!r}")
        if not (isinstance(self.factor, (int, float)) and self.factor > 0):
            raise ValueError(f"RopeScaling: factor must be a number > 0, got {self.factor!r}")
        L = self.original_max_position_embeddings
        if self.rope_type in ("dynamic", "yarn", "llama3") and not (isinstance(L, int) and L > 0):
            raise ValueError(f"RopeScaling: {self.rope_type} needs original_max_position_embeddings, the trained "
                             f"context, a positive int; got {L!r}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(f"RopeScaling: llama3 needs high_freq_factor > low_freq_factor > 0, got "
                             f"{self.high_freq_factor} and {self.low_freq_factor}")
        if self.rope_type == "freq_factors":
            c = self.freq_factors
            if not (isinstance(c, tuple) and c and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in c)):
                raise ValueError("RopeScaling: freq_factors needs a non-empty tuple of finite floats > 0, one per "
                                 f"rotary pair; got {c if c is None else type(c).__name__}")

    @classmethod
    def from_dict(cls, values, max_position_embeddings=None, where="rope_scaling"):
        """From a Hugging Face rope_scaling / rope_parameters dict ({"rope_type" or "type", "factor", ...}).

        max_position_embeddings: the model's context, which HF takes as original_max_position_embeddings
        when the dict has none (dynamic and yarn); yarn without a factor takes max / original, as HF does.
        rope_theta and partial_rotary_factor (1.0 only) may be in the dict; other keys are refused."""
        if values is None:
            return None
        if isinstance(values, RopeScaling):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"{where}: must be an object such as {{\"rope_type\": \"linear\", \"factor\": 4}}, "
                             f"got {values!r}")
        values = dict(values)
        kind = values.pop("rope_type", None) or values.pop("type", None) or "default"
        values.pop("type", None)
        values.pop("rope_theta", None)
        if float(values.pop("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError(f"{where}: partial_rotary_factor other than 1.0 is not supported")
        known = set(cls.__dataclass_fields__) - {"rope_type"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for rope_type {kind!r}; known: {sorted(known)}")
        if kind in ("dynamic", "yarn") and values.get("original_max_position_embeddings") is None:
            values["original_max_position_embeddings"] = max_position_embeddings
        if kind == "yarn" and values.get("factor") is None and max_position_embeddings and \
                values.get("original_max_position_embeddings"):
            values["factor"] = max_position_embeddings / values["original_max_position_embeddings"]
        values = {k: v for k, v in values.items() if v is not None or k in ("attention_factor", "mscale")}
        if "original_max_position_embeddings" in values:
            values["original_max_position_embeddings"] = int(values["original_max_position_embeddings"])
        if isinstance(values.get("freq_factors"), (list, tuple, np.ndarray)):
            values["freq_factors"] = tuple(float(v) for v in values["freq_factors"])    # hashable: tables are cached
        try:
            return cls(rope_type=kind, **values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def to_dict(self):
        """The HF-style dict (rope_type and the fields that matter for it)."""
        keys = {"default": (), "linear": ("factor",), "dynamic": ("factor", "original_max_position_embeddings"),
                "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                         "mscale", "mscale_all_dim", "truncate"),
                "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
                "freq_factors": ("freq_factors",)}
        out = {"rope_type": self.rope_type}
        out.update({k: getattr(self, k) for k in keys[self.rope_type] if getattr(self, k) is not None})
        if "freq_factors" in out:
            out["freq_factors"] = list(out["freq_factors"])                     # JSON
        return out


def _mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(head_dim, theta, scaling=None, seq_len=None):
    """(inv_freq (D/2,) float64, attention_factor) of RoPE with a scaling (see the module docstring).

    seq_len: the current length, which only dynamic NTK reads (None: no longer than trained)."""
    D = head_dim
    exponents = np.arange(0, D, 2, dtype=np.float64) / D                 # 2i / D
    inv_freq = theta ** -exponents
    s = scaling
    if s is None or s.rope_type == "default":
        return inv_freq, 1.0
    if s.rope_type == "linear":
        return inv_freq / s.factor, 1.0
    if s.rope_type == "freq_factors":
        if len(s.freq_factors) != D // 2:
            raise ValueError(f"RopeScaling: freq_factors has {len(s.freq_factors)} values, but a head of {D} dims "
                             f"has {D // 2} rotary pairs")
        return inv_freq / np.asarray(s.freq_factors, dtype=np.float64), 1.0
    L = s.original_max_position_embeddings
    if s.rope_type == "dynamic":
        T = max(seq_len or L, L)
        base = theta * ((s.factor * T / L) - (s.factor - 1)) ** (D / (D - 2))
        return base ** -exponents, 1.0
    if s.rope_type == "yarn":
        if s.attention_factor is not None:
            attention_factor = float(s.attention_factor)
        elif s.mscale and s.mscale_all_dim:
            attention_factor = _mscale(s.factor, s.mscale) / _mscale(s.factor, s.mscale_all_dim)
        else:
            attention_factor = _mscale(s.factor)

        def turns(n):                                                     # the pair that turns n times over L
            return D * math.log(L / (n * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = turns(s.beta_fast), turns(s.beta_slow)
        if s.truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, D - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(D // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)    # 0: extrapolate, 1: interpolate
        return inv_freq / s.factor * ramp + inv_freq * (1 - ramp), attention_factor
    # llama3
    wavelength = 2 * math.pi / inv_freq
    low_wavelength, high_wavelength = L / s.low_freq_factor, L / s.high_freq_factor
    scaled = np.where(wavelength > low_wavelength, inv_freq / s.factor, inv_freq)
    a = (L / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - a) * scaled / s.factor + a * scaled
    medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
    return np.where(medium, smoothed, scaled), 1.0


def llama3_freq_factors(head_dim, theta, scaling):
    """(D/2,) c_i = f_i / f'_i of a llama3 scaling: the rope_freqs tensor llama.cpp writes for it."""
    plain, _ = rope_frequencies(head_dim, theta)
    scaled, _ = rope_frequencies(head_dim, theta, scaling)
    return plain / scaled


def scaled_rope_angles(positions, head_dim, theta, scaling, dtype):
    """cos and sin like kernels.rope_angles, from rope_frequencies, times the attention factor.

    positions: (T,) or (B, T) ints -> (T, D) or (B, 1, T, D). Dynamic NTK takes the current length as
    the largest position + 1 (as Hugging Face does at each forward)."""
    positions = np.asarray(positions)
    seq_len = int(positions.max(initial=0)) + 1
    inv_freq, factor = rope_frequencies(head_dim, theta, scaling, seq_len)
    angles = positions.astype(np.float64)[..., None] * inv_freq                 # (..., T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)
    if angles.ndim == 3:
        angles = angles[:, None]
    return (np.cos(angles) * factor).astype(dtype), (np.sin(angles) * factor).astype(dtype)


@functools.lru_cache(maxsize=64)
def cached_scaled_rope_angles(position_bytes, position_dtype, shape, D, theta, scaling, dtype):
    """scaled_rope_angles, cached by value (see functional.attention.rope_tables), read-only."""
    positions = np.frombuffer(position_bytes, dtype=position_dtype).reshape(shape)
    cos, sin = scaled_rope_angles(positions, D, theta, scaling, np.dtype(dtype))
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin
