"""LoRA adapters on a model's linear layers (Hu et al. 2021); on quantized layers, QLoRA (Dettmers et al. 2023).

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    apply_lora(model, config)         # in place: wraps the targeted layers, freezes every other weight
    ...train model.trainable_parameters()...
    merge_lora(model)                 # in place: W + s B A folded back into plain layers

A targeted weight W (out, in) gets A (r, in), Kaiming-uniform like nn.Linear's init (or N(0, 1/r^2) with
init_lora_weights="gaussian"), and B (out, r) = 0, so the adapted model starts equal to the base;
forward is y = x W^T + b + s (dropout(x) A^T) B^T with s = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora), one node (F.lora_linear, or F.lora_quantized_linear over a quantized W). Every weight of
the base, targeted or not, is frozen (requires_grad False): it gets no gradient and no optimizer state.

Names: target_modules takes peft's module names or minillm's, matched on every block:

    peft (Llama)  q_proj   k_proj   v_proj   o_proj   gate_proj    up_proj    down_proj
    minillm       attn.wq  attn.wk  attn.wv  attn.wo  ffn.w_gate   ffn.w_up   ffn.w_down
    peft (GPT-2)  c_attn = attn.wq + attn.wk + attn.wv (one A, B cut in three)   c_proj = attn.wo and ffn.proj
                  c_fc = ffn.fc

and "all-linear" (every projection of every block; not the output head). GPT-2's c_attn is one fused
(3C, C) matrix in Hugging Face, which minillm holds as three: its adapter is one LoraAdapter on the
attention layer (c_attn_adapter: A (r, C), B (3C, r)), and wq, wk, wv each use their third of B's rows
with the shared A, which is exactly peft's update of the fused matrix. The LoRA-wrapped layers keep the
base's parameter names (blocks.0.attn.wq.weight), and the adapters add theirs
(blocks.0.attn.wq.adapter.lora_A, blocks.0.ffn.gate_adapter.lora_B, blocks.0.attn.c_attn_adapter.lora_A).
"""
import math

import numpy as np

from .. import functional as F
from ..autograd import no_grad
from .layers import Linear, SwiGLU
from .lora_config import KNOWN, LoraConfig, _layouts, resolve_targets  # noqa: F401 (public here too)
from .module import Module, Parameter
from .quantized import QuantizedLinear, QuantizedWeights

class LoraAdapter(Module):
    """lora_A (r, in) and lora_B (out, r), the scale s, and the dropout on the adapter's input."""

    def __init__(self, in_features, out_features, config, rng, dtype=np.float32):
        self.r, self.scale, self.dropout, self.rng = config.r, config.scale, config.lora_dropout, rng
        init = config.init_lora_weights
        bound = 1 / math.sqrt(in_features)        # kaiming_uniform_(a=sqrt(5)), torch.nn.Linear's init
        if init == "gaussian":
            A = rng.standard_normal((config.r, in_features)) / config.r
        else:
            A = rng.uniform(-bound, bound, (config.r, in_features))
        B = rng.uniform(-1 / math.sqrt(config.r), 1 / math.sqrt(config.r), (out_features, config.r)) if init is False \
            else np.zeros((out_features, config.r))
        self.lora_A = Parameter(A, dtype=dtype)
        self.lora_B = Parameter(B, dtype=dtype)
        self._last = None                         # (input, mask): q, k, v of c_attn share one mask

    def mask(self, x):
        """Dropout's mask for input x (None in eval mode or without dropout); the same x gets the same mask."""
        if not self.training or not self.dropout:
            self._last = None
            return None
        if self._last is None or self._last[0] is not x:
            self._last = (x, F.dropout_mask(x.shape, self.dropout, self.rng, np.dtype(self.lora_A.dtype)))
        return self._last[1]

    def delta(self, rows=None):
        """The update s B A (out, in) (only B's `rows` for a slice of a fused matrix), in float64."""
        B = self.lora_B.data if rows is None else self.lora_B.data[rows]
        return self.scale * (B.astype(np.float64) @ self.lora_A.data.astype(np.float64))

    def extra_repr(self):
        return f"r={self.r}, in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, scale={self.scale:g}"


def project(x, weight, bias, adapter, rows=None):
    """x W^T + b (+ the adapter's update) for a float or quantized W: one node either way."""
    if adapter is None:
        return weight.matmul(x, bias) if isinstance(weight, QuantizedWeights) else F.linear(x, weight, bias)
    B = adapter.lora_B if rows is None else adapter.lora_B[rows]
    mask = adapter.mask(x)
    if isinstance(weight, QuantizedWeights):
        return F.lora_quantized_linear(x, weight.scheme, weight.q, weight.scale, weight.third, bias,
                                       adapter.lora_A, B, adapter.scale, mask)
    return F.lora_linear(x, weight, bias, adapter.lora_A, B, adapter.scale, mask)


def _fold(weight, adapter, rows, sign):
    """W <- W + sign * s B A in place of W's array (a new array: W may be a read-only file view)."""
    if isinstance(weight, QuantizedWeights):
        raise ValueError("LoRA: cannot merge into a quantized weight in place; merge_lora(model) makes a "
                         "float layer of it")
    weight.data = (weight.data.astype(np.float64) + sign * adapter.delta(rows)).astype(weight.dtype)


class LoraLinear(Module):
    """A Linear or QuantizedLinear with a LoRA adapter. It keeps the base's weight and bias under
    their names; `adapter` is its own LoraAdapter, or `shared` = (adapter, rows) for one third of
    GPT-2's fused c_attn, whose adapter the attention layer owns."""

    def __init__(self, base, adapter=None, shared=None):
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapter = adapter
        self._shared = shared                      # a tuple: not walked, so the adapter is counted once
        self.merged = False

    def lora(self):
        """(adapter, rows of its B or None)."""
        return (self.adapter, None) if self._shared is None else self._shared

    def forward(self, x):
        if self.merged:
            return project(x, self.weight, self.bias, None)
        return project(x, self.weight, self.bias, *self.lora())

    def infer(self, x):
        """forward on arrays without the tape (DecoderLM.infer, generation): the adapter's update included."""
        with no_grad():
            return self.forward(x).data

    def merge(self):
        """W += s B A; forward then runs the plain layer (exact to float rounding; unmerge undoes it)."""
        if not self.merged:
            _fold(self.weight, *self.lora(), +1)
            self.merged = True

    def unmerge(self):
        if self.merged:
            _fold(self.weight, *self.lora(), -1)
            self.merged = False

    def base_layer(self):
        """The plain Linear (quantized weights dequantized) holding W, merged or not."""
        w = self.weight.dequantize() if isinstance(self.weight, QuantizedWeights) else self.weight.data
        linear = Linear(self.in_features, self.out_features, bias=self.bias is not None, init_std=0.0,
                        dtype=w.dtype)
        linear.weight.data = w
        if self.bias is not None:
            linear.bias.data = self.bias.data
        return linear

    def extra_repr(self):
        scheme = f", {self.weight.scheme}" if isinstance(self.weight, QuantizedWeights) else ""
        return f"{self.in_features}, {self.out_features}{scheme}, bias={self.bias is not None}, merged={self.merged}"


class LoraSwiGLU(Module):
    """SwiGLU (float or quantized) with adapters on any of w_gate, w_up, w_down, composed of separate
    nodes: h = silu(project(x, w_gate)) * project(x, w_up), y = project(h, w_down). The weights keep their
    names; the adapters are gate_adapter, up_adapter, down_adapter (None where not targeted)."""

    PARTS = (("w_gate", "gate_adapter"), ("w_up", "up_adapter"), ("w_down", "down_adapter"))

    def __init__(self, base, adapters):
        self.w_gate, self.w_up, self.w_down = base.w_gate, base.w_up, base.w_down
        self.gate_adapter = adapters.get("w_gate")
        self.up_adapter = adapters.get("w_up")
        self.down_adapter = adapters.get("w_down")
        self.merged = False

    def forward(self, x):
        adapter = (lambda a: None) if self.merged else (lambda a: a)
        h = F.silu(project(x, self.w_gate, None, adapter(self.gate_adapter))) * \
            project(x, self.w_up, None, adapter(self.up_adapter))
        return project(h, self.w_down, None, adapter(self.down_adapter))

    def infer(self, x):
        """forward on arrays without the tape (DecoderLM.infer, generation): the adapters' updates included."""
        with no_grad():
            return self.forward(x).data

    def merge(self):
        if not self.merged:
            for weight, adapter in self.PARTS:
                if getattr(self, adapter) is not None:
                    _fold(getattr(self, weight), getattr(self, adapter), None, +1)
            self.merged = True

    def unmerge(self):
        if self.merged:
            for weight, adapter in self.PARTS:
                if getattr(self, adapter) is not None:
                    _fold(getattr(self, weight), getattr(self, adapter), None, -1)
            self.merged = False

    def base_layer(self):
        """The plain SwiGLU holding the (merged or not) weights, dequantized."""
        as_float = {w: (getattr(self, w).dequantize() if isinstance(getattr(self, w), QuantizedWeights)
                        else getattr(self, w).data) for w, _ in self.PARTS}
        hidden, dim = as_float["w_gate"].shape
        swiglu = SwiGLU(dim, hidden, init_std=0.0, dtype=as_float["w_gate"].dtype)
        for name, array in as_float.items():
            getattr(swiglu, name).data = array
        return swiglu


# ---- applying, merging, counting

def apply_lora(model, config, rng=None):
    """Wrap model's targeted layers in LoRA adapters and freeze every other weight, in place.

    model: a DecoderLM (float or quantized: the adapters are float32 either way; a quantized base is
    QLoRA). Returns the model, with model.lora_config = config. A target that matches no layer is an
    error, and so is a model that has adapters already."""
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("apply_lora: the model has LoRA adapters already")
    rng = rng if rng is not None else np.random.default_rng()
    plan = lora_plan(model, config)
    for p in model.parameters():
        p.requires_grad = False
    dtype = _adapter_dtype(model)
    swiglu_parts = {}
    for i, block, part, name in plan:
        if part == "attn" and name == "c_attn":
            attn, C = block.attn, block.attn.wq.in_features
            sizes = [attn.wq.out_features, attn.wk.out_features, attn.wv.out_features]
            attn.c_attn_adapter = LoraAdapter(C, sum(sizes), config, rng, dtype)
            edges = np.cumsum([0] + sizes)
            for head, a, b in zip(("wq", "wk", "wv"), edges[:-1], edges[1:]):
                setattr(attn, head, LoraLinear(getattr(attn, head), shared=(attn.c_attn_adapter, slice(a, b))))
        elif part == "attn" or name in ("fc", "proj"):
            owner = block.attn if part == "attn" else block.ffn
            layer = getattr(owner, name)
            if not isinstance(layer, (Linear, QuantizedLinear)):
                raise ValueError(f"apply_lora: blocks.{i}.{part}.{name} is a {type(layer).__name__}, not a linear layer")
            setattr(owner, name, LoraLinear(layer, LoraAdapter(layer.in_features, layer.out_features, config, rng, dtype)))
        else:
            swiglu_parts.setdefault(i, []).append(name)
    for i, names in swiglu_parts.items():
        ffn = model.blocks[i].ffn
        shapes = {"w_gate": ffn.w_gate.shape, "w_up": ffn.w_up.shape, "w_down": ffn.w_down.shape}
        adapters = {n: LoraAdapter(shapes[n][1], shapes[n][0], config, rng, dtype) for n in ("w_gate", "w_up", "w_down")
                    if n in names}
        model.blocks[i].ffn = LoraSwiGLU(ffn, adapters)
    model.lora_config = config
    return model


def lora_plan(model, config):
    """[(block index, block, "attn" or "ffn", layer name)] that config targets on model (ValueError if none)."""
    locations = resolve_targets(model, config.target_modules)
    layers = config.layers_to_transform
    plan = []
    for i, block in enumerate(model.blocks):
        if layers is not None and i not in layers:
            continue
        layout = _layouts(block)
        for where in sorted(locations):
            part, name = where.split(".")
            if part == "ffn" and (layout is None or (name in ("fc", "proj")) != (layout == "mlp")):
                continue
            plan.append((i, block, part, name))
    if not plan:
        raise ValueError(f"apply_lora: target_modules {config.target_modules} match no layer of this model")
    return plan


def adapter_shapes(model, config):
    """{adapter parameter name: shape} that apply_lora(model, config) would make (model is not changed)."""
    shapes = {}
    for i, block, part, name in lora_plan(model, config):
        if name == "c_attn":
            where, (out, K) = "attn.c_attn_adapter", (sum(getattr(block.attn, h).out_features for h in ("wq", "wk", "wv")),
                                                      block.attn.wq.in_features)
        elif part == "attn" or name in ("fc", "proj"):
            layer = getattr(block.attn if part == "attn" else block.ffn, name)
            where, (out, K) = f"{part}.{name}.adapter", (layer.out_features, layer.in_features)
        else:
            where, (out, K) = f"ffn.{name[2:]}_adapter", getattr(block.ffn, name).shape
        shapes[f"blocks.{i}.{where}.lora_A"] = (config.r, K)
        shapes[f"blocks.{i}.{where}.lora_B"] = (out, config.r)
    return shapes


def _adapter_dtype(model):
    """float64 for a float64 model (gradient checks), else float32."""
    dtypes = {p.dtype for p in model.parameters()}
    return np.float64 if dtypes == {np.dtype(np.float64)} else np.float32


def lora_layers(model):
    """(name, LoraLinear or LoraSwiGLU) of every wrapped layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoraLinear, LoraSwiGLU))]


def adapter_state_dict(model):
    """{name: array} of the adapters' parameters alone (what a LoRA checkpoint holds)."""
    return {n: p.data.copy() for n, p in model.named_parameters() if ".lora_A" in n or ".lora_B" in n}


def trainable_parameters(model):
    """(name, Parameter) of every parameter that requires a gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def merge_lora(model):
    """Fold every adapter into its weight and put plain layers back (Linear, SwiGLU), in place: W + s B A,
    with a quantized W dequantized first (the merged layer is float32). The model's weights require
    gradients again, as a fresh model's do. Returns the model."""
    modules = dict(model.named_modules())
    for name, layer in lora_layers(model):
        plain = layer.base_layer()                    # W as it is now (already merged, or not)
        if not layer.merged:
            if isinstance(layer, LoraLinear):
                updates = [(plain.weight, layer.lora())]
            else:
                updates = [(getattr(plain, w), (getattr(layer, a), None)) for w, a in LoraSwiGLU.PARTS
                           if getattr(layer, a) is not None]
            for weight, (adapter, rows) in updates:
                weight.data = (weight.data.astype(np.float64) + adapter.delta(rows)).astype(weight.dtype)
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, plain)
    for _, module in model.named_modules():
        if "c_attn_adapter" in vars(module):
            del module.c_attn_adapter
    for p in model.parameters():
        p.requires_grad = True
    model.lora_config = None
    return model


def set_adapter_rng(model, rng):
    """Give every adapter's dropout the generator rng (a run reseeds it each step, so a resumed run
    draws the same masks)."""
    for _, module in model.named_modules():
        if isinstance(module, LoraAdapter):
            module.rng = rng
