"""A DecoderLM from named weights read out of a file: checked against the config, then put in place.

The names are the float model's parameter names (wte.weight, blocks.0.attn.wq.weight,
blocks.0.ffn.w_gate, ...). A value is a float array (kept as is when it is already float32, so a
memory-mapped tensor stays a view of the file), or a Quantized weight in one of minillm's schemes,
which becomes the quantized twin of its module (minillm/nn/quantized.py): QuantizedLinear for a Linear,
QuantizedSwiGLU when all three SwiGLU matrices are quantized, QuantizedEmbedding for the token
table (also the tied head). A quantized weight anywhere else is dequantized to float32.

Every name, shape and value is checked before the model is returned, so a bad file raises
FormatError and leaves nothing half-built.
"""
from dataclasses import dataclass, field

import numpy as np

from .. import kernels
from ..models import DecoderLM
from ..nn import Dropout, Embedding, Linear, SwiGLU
from ..nn.quantized import QuantizedEmbedding, QuantizedLinear, QuantizedSwiGLU, QuantizedWeights
from .errors import FormatError
from .ggml_blocks import has_int8_minimum


@dataclass
class Quantized:
    """A (N, K) weight in minillm scheme `scheme`: arrays {"q", "scale"[, "min"]} (rows = N)."""
    scheme: str
    arrays: dict
    shape: tuple
    source: str = field(default="")          # the file's type name, for `minillm info`

    def rows(self, index):
        """The weight with its rows picked or reordered by index (a slice or an index array)."""
        arrays = {k: np.ascontiguousarray(v[index]) for k, v in self.arrays.items()}
        return Quantized(self.scheme, arrays, (arrays["q"].shape[0], self.shape[1]), self.source)

    def dequantize(self):
        a = self.arrays
        return kernels.dequantize_weights(self.scheme, a["q"], a["scale"], a.get("min")).astype(np.float32, copy=False)


def map_rows(value, fn):
    """fn applied to a float weight's rows, or to each array of a quantized one (rows are independent)."""
    if isinstance(value, Quantized):
        arrays = {k: fn(v) for k, v in value.arrays.items()}
        return Quantized(value.scheme, arrays, (arrays["q"].shape[0], value.shape[1]), value.source)
    return fn(value)


def split_rows(value, sizes):
    """value cut into consecutive blocks of rows of the given sizes (GPT-2's fused q, k, v)."""
    edges = np.cumsum([0] + list(sizes))
    if isinstance(value, Quantized):
        return [value.rows(slice(a, b)) for a, b in zip(edges[:-1], edges[1:])]
    return [value[a:b] for a, b in zip(edges[:-1], edges[1:])]


def shape_of(value):
    return tuple(value.shape)


class _Zero(np.ndarray):
    """A read-only broadcast zero of any shape, taking no memory: the initial value of a weight that
    the file's tensor replaces. Scaling it (as the init does) gives itself back."""

    def __mul__(self, other):
        return self

    __rmul__ = __truediv__ = __mul__

    def astype(self, dtype, *args, **kwargs):
        return np.broadcast_to(np.zeros((), dtype), self.shape)


class _NoInit:
    """Stands in for the random generator while building a model whose weights come from a file, so
    the random init (and its memory: 540 MB for a 135M model) is skipped."""

    def standard_normal(self, shape):
        return np.broadcast_to(np.float32(0), shape).view(_Zero)


def _as_float(name, value, where):
    array = value.dequantize() if isinstance(value, Quantized) else np.asarray(value)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise FormatError(f"{where}: tensor {name} holds NaN or infinity")
    return array


def _check_quantized(name, value, where):
    for key, array in value.arrays.items():
        if key != "q" and not np.all(np.isfinite(array)):
            raise FormatError(f"{where}: tensor {name} has {key}s that are NaN or infinite")


def build_decoder(config, weights, where, dequantize=False):
    """The DecoderLM of config holding weights {float parameter name: array or Quantized}."""
    model = DecoderLM(config, rng=_NoInit())
    for _, module in model.named_modules():
        if isinstance(module, Dropout):
            module.rng = np.random.default_rng()
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise FormatError(f"{where}: the tensors do not fit the model its config describes: "
                          f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                          f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    for name, value in weights.items():
        if shape_of(value) != params[name].shape:
            raise FormatError(f"{where}: tensor {name} has shape {shape_of(value)}, the config needs {params[name].shape}")
    weights = dict(weights)
    for name, value in weights.items():
        if isinstance(value, Quantized):
            _check_quantized(name, value, where)
            if dequantize or has_int8_minimum(value.arrays):
                weights[name] = _as_float(name, value, where)
    modules = dict(model.named_modules())
    replacements = {}
    for name, value in weights.items():
        if not isinstance(value, Quantized):
            continue
        owner, attr = name.rsplit(".", 1)
        module = modules.get(owner)
        if isinstance(module, Linear) and attr == "weight":
            replacements[owner] = _quantized_linear(module, value)
        elif isinstance(module, Embedding) and owner == "wte":
            twin = QuantizedEmbedding(None, value.scheme, *value.shape)
            _fill(twin.table, value)
            replacements[owner] = twin
        elif isinstance(module, SwiGLU) and owner not in replacements:
            parts = [weights[f"{owner}.{w}"] for w in ("w_gate", "w_up", "w_down")]
            if all(isinstance(p, Quantized) for p in parts):
                replacements[owner] = _quantized_swiglu(parts)
    for name, value in list(weights.items()):        # quantized weights no twin took: float32
        owner = name.rsplit(".", 1)[0]
        if isinstance(value, Quantized) and owner not in replacements:
            weights[name] = _as_float(name, value, where)
    for name, value in weights.items():
        if not isinstance(value, Quantized):
            params[name].data = _as_float(name, value, where)
    for owner, twin in replacements.items():
        if isinstance(twin, QuantizedLinear) and twin.bias is not None:
            twin.bias.data = _as_float(f"{owner}.bias", weights[f"{owner}.bias"], where)
        parent, _, attr = owner.rpartition(".")
        setattr(modules[parent] if parent else model, attr, twin)
    schemes = sorted({v.scheme for v in weights.values() if isinstance(v, Quantized)})
    if schemes:
        model.quantization = schemes[0] if len(schemes) == 1 else "mixed"
    return model.eval()


def _fill(twin, value):
    twin.q, twin.scale = value.arrays["q"], value.arrays["scale"]
    twin.min = value.arrays.get("min")


def _quantized_linear(linear, value):
    twin = QuantizedLinear(None, value.scheme, linear.out_features, linear.in_features, linear.bias is not None)
    _fill(twin.weight, value)
    return twin


def _quantized_swiglu(parts):
    gate, up, down = parts
    hidden, dim = gate.shape
    twin = QuantizedSwiGLU(None, gate.scheme, dim, hidden)
    for attr, value in zip(("w_gate", "w_up", "w_down"), parts):
        weights = QuantizedWeights(value.scheme, *value.shape)
        _fill(weights, value)
        setattr(twin, attr, weights)
    return twin


def weight_types(model):
    """{module path: scheme or "f32"} of every matrix in model, for `minillm info`."""
    types = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedWeights):
            types[name] = module.scheme
    for name, p in model.named_parameters():
        if p.ndim == 2:
            types[name] = str(p.dtype).replace("float", "f")
    return types
