"""Quantized modules: INT8 and INT4 twins of Linear, SwiGLU and Embedding, and quantize_model.

    model = quantize_model(model, "q4_0")      # in place: Linear, SwiGLU and the token table
    save_checkpoint(out_dir, model, tokenizer)  # config.json records the scheme; build_model reads it back

(minillm/quantize.py has the checkpoint workflow: quantize_checkpoint and load_quantized.)

Schemes (formulas and layouts in minillm/kernels/reference/quant.py):

    int8   int8 per output channel           1 byte per weight  + 4 bytes per row
    q8_0   int8 in groups of 32 along K      1 byte per weight  + 4 bytes per 32
    q4_0   4-bit symmetric, groups of 32     0.5 byte per weight + 4 bytes per 32
    q4_1   4-bit with a min, groups of 32    0.5 byte per weight + 8 bytes per 32

What is quantized: every Linear (attention projections, MLP, an untied head), every SwiGLU and
the token embedding, which a tied model also uses as its output head. Norms, biases, learned
position tables and MoE routers stay in float32: they are small, and the router's choice is
sensitive to rounding. Each matmul quantizes its input rows to int8 per group of 32 on the fly
and runs integer dot products (csrc/quant.cpp).
"""
import numpy as np

from .. import functional as F
from .. import kernels
from ..autograd import Tensor
from ..kernels.reference.quant import GROUP, SCHEMES
from .fused import FusedProjection
from .layers import Embedding, Linear, SwiGLU
from .module import Module, Parameter

INT4 = ("q4_0", "q4_1")


def _skeleton_arrays(scheme, out_features, in_features):
    """Zero arrays with the layout of a quantized (out, in) weight, to be filled by load_state_dict."""
    G = in_features // GROUP
    if scheme == "int8":
        return {"q": np.zeros((out_features, in_features), np.int8), "scale": np.zeros(out_features, np.float32)}
    q = np.zeros((out_features, in_features // 2 if scheme in INT4 else in_features),
                 np.uint8 if scheme in INT4 else np.int8)
    arrays = {"q": q, "scale": np.zeros((out_features, G), np.float32)}
    if scheme == "q4_1":
        arrays["min"] = np.zeros((out_features, G), np.float32)
    return arrays


def check_quantizable(scheme, in_features, where):
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme != "int8" and in_features % GROUP:
        raise ValueError(f"quantize: {where} has {in_features} input features, not a multiple of the group size "
                         f"{GROUP} that {scheme!r} needs; use --scheme int8 (per channel) for this model")


class QuantizedWeights(Module):
    """A frozen (out_features, in_features) weight in a quantized scheme; its arrays are buffers."""

    def __init__(self, scheme, out_features, in_features, weight=None):
        check_quantizable(scheme, in_features, f"a ({out_features}, {in_features}) weight")
        self.scheme, self.out_features, self.in_features = scheme, out_features, in_features
        arrays = (kernels.quantize_weights(np.asarray(weight, dtype=np.float32), scheme) if weight is not None
                  else _skeleton_arrays(scheme, out_features, in_features))
        self.q, self.scale = arrays["q"], arrays["scale"]
        self.min = arrays.get("min")

    def own_buffers(self):
        buffers = {"q": self.q, "scale": self.scale}
        if self.min is not None:
            buffers["min"] = self.min
        return buffers

    def matmul(self, x, bias=None):
        """x (..., in) -> (..., out) = x W^T + bias, as one autograd node (gradient to x only)."""
        return F.quantized_linear(x, self.scheme, self.q, self.scale, self.min, bias)

    def infer(self, x, bias=None):
        """matmul on arrays, without the tape: x (..., in) -> (..., out)."""
        y = kernels.quant_matmul(x.reshape(-1, x.shape[-1]), self.scheme, self.q, self.scale, self.min,
                                 None if bias is None else bias.data)
        return y.reshape(*x.shape[:-1], self.out_features).astype(x.dtype, copy=False)

    def dequantize(self, rows=None):
        """The float32 weight (or only the given rows) that the quantized arrays stand for."""
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])
        return kernels.dequantize_weights(self.scheme, pick(self.q), pick(self.scale),
                                          None if self.min is None else pick(self.min))

    def nbytes(self):
        return sum(a.nbytes for a in self.own_buffers().values())

    def extra_repr(self):
        return f"{self.scheme}, {self.out_features}, {self.in_features}"


class QuantizedLinear(Module):
    """y = x W^T + b with W quantized; b stays float."""

    def __init__(self, linear=None, scheme="q8_0", out_features=None, in_features=None, bias=False):
        if linear is not None:
            out_features, in_features, bias = linear.out_features, linear.in_features, linear.bias is not None
        self.in_features, self.out_features = in_features, out_features
        self.weight = QuantizedWeights(scheme, out_features, in_features,
                                       None if linear is None else linear.weight.data)
        self.bias = None
        if bias:
            self.bias = Parameter(linear.bias.data if linear is not None else np.zeros(out_features, np.float32))

    def forward(self, x):
        return self.weight.matmul(x, self.bias)

    def infer(self, x):
        return self.weight.infer(x, self.bias)


class QuantizedSwiGLU(Module):
    """(silu(x W_gate^T) * (x W_up^T)) W_down^T with the three weights quantized."""

    def __init__(self, swiglu=None, scheme="q8_0", dim=None, hidden_dim=None):
        if swiglu is not None:
            hidden_dim, dim = swiglu.w_gate.shape
        get = (lambda name: None) if swiglu is None else (lambda name: getattr(swiglu, name).data)
        self.w_gate = QuantizedWeights(scheme, hidden_dim, dim, get("w_gate"))
        self.w_up = QuantizedWeights(scheme, hidden_dim, dim, get("w_up"))
        self.w_down = QuantizedWeights(scheme, dim, hidden_dim, get("w_down"))
        self.gate_up = FusedProjection()               # [W_gate; W_up] as one quantized matrix for infer

    def forward(self, x):
        return self.w_down.matmul(F.silu(self.w_gate.matmul(x)) * self.w_up.matmul(x))

    def infer(self, x):
        h = self.gate_up(x, [self.w_gate, self.w_up])                          # (..., 2F): gate | up
        F_ = h.shape[-1] // 2
        return self.w_down.infer(kernels.silu_forward(h[..., :F_]) * h[..., F_:])


class QuantizedEmbedding(Module):
    """A quantized (V, C) token table: lookups dequantize only the rows they need, and attend()
    is the tied output head, x table^T, on the quantized table."""

    def __init__(self, embedding=None, scheme="q8_0", num_embeddings=None, dim=None):
        if embedding is not None:
            num_embeddings, dim = embedding.weight.shape
        self.table = QuantizedWeights(scheme, num_embeddings, dim, None if embedding is None else embedding.weight.data)

    def forward(self, ids):
        ids = np.asarray(ids)
        V = self.table.out_features
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"embedding: ids must be in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
        used, inverse = np.unique(ids, return_inverse=True)
        rows = self.table.dequantize(used)                                 # only the rows in use: (U, C)
        return Tensor(rows[inverse.reshape(ids.shape)])                    # (*ids.shape, C)

    def attend(self, x):
        return self.table.matmul(x)

    def infer(self, ids):
        return self.forward(ids).data

    def infer_attend(self, x):
        return self.table.infer(x)


def _replacement(name, module, scheme, build):
    """The quantized twin of module, or None to keep it. Checks that the scheme fits its shapes;
    build: "check" (only that), "skeleton" (zero-filled, for loading) or "quantize"."""
    skeleton = build == "skeleton"
    if isinstance(module, Linear) and not name.endswith("router"):
        check_quantizable(scheme, module.in_features, name)
        if build == "check":
            return module
        return (QuantizedLinear(None, scheme, module.out_features, module.in_features, module.bias is not None)
                if skeleton else QuantizedLinear(module, scheme))
    if isinstance(module, SwiGLU):
        hidden, dim = module.w_gate.shape
        check_quantizable(scheme, dim, name)
        check_quantizable(scheme, hidden, f"{name}.w_down")
        if build == "check":
            return module
        return QuantizedSwiGLU(None, scheme, dim, hidden) if skeleton else QuantizedSwiGLU(module, scheme)
    if isinstance(module, Embedding) and name == "wte":
        V, C = module.weight.shape
        check_quantizable(scheme, C, name)
        if build == "check":
            return module
        return QuantizedEmbedding(None, scheme, V, C) if skeleton else QuantizedEmbedding(module, scheme)
    return None


def quantize_model(model, scheme, skeleton=False, progress=False):
    """Replace model's Linear, SwiGLU and token-embedding modules by quantized twins, in place.

    Every shape is checked before anything changes. skeleton=True builds zero-filled quantized
    modules of the right layout instead of quantizing (load_state_dict fills them; that is how a
    quantized checkpoint loads). progress: a progress bar over the matrices. Returns the model,
    marked with model.quantization = scheme.
    """
    if getattr(model, "quantization", None):
        raise ValueError(f"quantize: the model is already quantized ({model.quantization})")
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {SCHEMES}, got {scheme!r}")
    plan = []
    for parent_name, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            name = f"{parent_name}.{attr}" if parent_name else attr
            if _replacement(name, child, scheme, "check") is not None:
                plan.append((parent, attr, name, child))
    if progress:
        from tqdm import tqdm
        plan = tqdm(plan, desc=f"quantize {scheme}", unit="matrix")
    for parent, attr, name, child in plan:
        setattr(parent, attr, _replacement(name, child, scheme, "skeleton" if skeleton else "quantize"))
    model.quantization = scheme
    model.eval()
    return model


def model_nbytes(model):
    """Bytes of all weights: float parameters plus quantized buffers."""
    return sum(p.data.nbytes for p in model.parameters()) + sum(a.nbytes for *_, a in model.named_buffers())


def check_quantized_weights(model):
    """Raise ValueError if a quantized model's arrays break the schemes' invariants: int8 values in
    [-127, 127] (the kernels' sign trick has no room for -128) and finite, non-negative scales.
    Checkpoints are checked when they load, since a file may come from elsewhere."""
    for name, module in model.named_modules():
        if not isinstance(module, QuantizedWeights):
            continue
        if module.q.dtype == np.int8 and module.q.size and module.q.min() < -127:
            raise ValueError(f"{name}: int8 weights must be in [-127, 127], found {module.q.min()}")
        if not np.all(np.isfinite(module.scale)) or np.any(module.scale < 0):
            raise ValueError(f"{name}: scales must be finite and >= 0")
        if module.min is not None and not np.all(np.isfinite(module.min)):
            raise ValueError(f"{name}: mins must be finite")
