"""LoraConfig (peft's fields) and the names that target_modules takes, resolved on a model's blocks.

    peft (Llama)  q_proj   k_proj   v_proj   o_proj   gate_proj    up_proj    down_proj
    minillm       attn.wq  attn.wk  attn.wv  attn.wo  ffn.w_gate   ffn.w_up   ffn.w_down
    peft (GPT-2)  c_attn = attn.wq + attn.wk + attn.wv     c_proj = attn.wo and ffn.proj     c_fc = ffn.fc

"all-linear" is every projection of every block (not the output head).
"""
import math
from dataclasses import asdict, dataclass, field

from .layers import MLP, SwiGLU
from .quantized import QuantizedSwiGLU

ATTENTION = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
SWIGLU = {"gate_proj": "w_gate", "up_proj": "w_up", "down_proj": "w_down"}
MLP_PARTS = {"c_fc": "fc", "c_proj": "proj"}                     # GPT-2's MLP (c_proj also names attn.wo)
MINILLM_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "fc", "proj")
KNOWN = tuple(ATTENTION) + tuple(SWIGLU) + ("c_attn", "c_proj", "c_fc") + MINILLM_NAMES + ("all-linear",)
INITS = (True, False, "default", "gaussian")


@dataclass(init=False)
class LoraConfig:
    """peft's LoraConfig fields (the ones minillm implements), under peft's names; the short names
    alpha, dropout and init are accepted too (LoraConfig(r=8, alpha=16, dropout=0.05, init="gaussian")).

    target_modules: names (see the module docstring), a comma-separated string of them, or None for
    peft's default (q_proj and v_proj on a Llama layout, c_attn on GPT-2). init_lora_weights: True /
    "default" (Kaiming-uniform A, zero B), "gaussian" (A ~ N(0, 1/r^2), zero B) or False (A and B
    both random: not the identity; for tests). lora_alpha defaults to r (scale 1)."""
    r: int = 8
    lora_alpha: float = None
    lora_dropout: float = 0.0
    target_modules: list | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    layers_to_transform: list | None = field(default=None)   # block indices; None: every block

    def __init__(self, r=8, lora_alpha=None, lora_dropout=0.0, target_modules=None, use_rslora=False,
                 init_lora_weights=True, layers_to_transform=None, *, alpha=None, dropout=None, init=None):
        for short, long, value in (("alpha", "lora_alpha", alpha), ("dropout", "lora_dropout", dropout),
                                   ("init", "init_lora_weights", init)):
            if value is not None and locals()[long] not in (None, 0.0, True) and locals()[long] != value:
                raise ValueError(f"LoraConfig: {short} and {long} name the same field; give one")
        self.r = r
        self.lora_alpha = alpha if alpha is not None else (lora_alpha if lora_alpha is not None else r)
        self.lora_dropout = dropout if dropout is not None else lora_dropout
        self.target_modules = list(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
        self.use_rslora = use_rslora
        self.init_lora_weights = init if init is not None else init_lora_weights
        self.layers_to_transform = layers_to_transform
        self.__post_init__()

    alpha = property(lambda self: self.lora_alpha)
    dropout = property(lambda self: self.lora_dropout)
    init = property(lambda self: self.init_lora_weights)

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"LoraConfig: r must be a positive int, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig: lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig: lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.init_lora_weights not in INITS or (isinstance(self.init_lora_weights, str) and
                                                    self.init_lora_weights not in ("default", "gaussian")):
            raise ValueError(f"LoraConfig: init_lora_weights must be True, False, 'default' or 'gaussian', "
                             f"got {self.init_lora_weights!r}")
        for name in self.target_modules or ():
            if name not in KNOWN:
                raise ValueError(f"LoraConfig: target module {name!r} is not one of {list(KNOWN)}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("LoraConfig: target_modules is empty; name at least one (e.g. q_proj,v_proj)")

    @property
    def scale(self):
        """s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self):
        return asdict(self)


def _layouts(block):
    """"swiglu" or "mlp" for the block's feed-forward (None for a Mixture-of-Experts one)."""
    if isinstance(block.ffn, (SwiGLU, QuantizedSwiGLU)) or hasattr(block.ffn, "gate_adapter"):   # or a LoraSwiGLU
        return "swiglu"
    return "mlp" if isinstance(block.ffn, MLP) else None


def resolve_targets(model, targets):
    """{block index: set of minillm locations} ("attn.wq", ..., "attn.c_attn", "ffn.w_gate", "ffn.fc", ...)."""
    blocks = list(model.blocks)
    ffn = {_layouts(b) for b in blocks} - {None}
    gpt2 = ffn == {"mlp"}
    if targets is None:
        targets = ["c_attn"] if gpt2 else ["q_proj", "v_proj"]
    locations = set()
    for name in targets:
        if name == "all-linear":
            locations |= {"attn.c_attn" if gpt2 else "attn.wq", "attn.wo", "ffn.fc", "ffn.proj"}
            if not gpt2:
                locations |= {"attn.wk", "attn.wv", "ffn.w_gate", "ffn.w_up", "ffn.w_down"}
        elif name == "c_attn":
            if not gpt2:
                raise ValueError("LoRA: c_attn is GPT-2's fused q/k/v projection; this model has a SwiGLU "
                                 "(Llama) layout: target q_proj, k_proj, v_proj")
            locations.add("attn.c_attn")
        elif name == "c_proj":
            locations |= {"attn.wo", "ffn.proj"}
        elif name in ATTENTION or name in ("wq", "wk", "wv", "wo"):
            locations.add("attn." + ATTENTION.get(name, name))
        elif name in SWIGLU or name in ("w_gate", "w_up", "w_down"):
            locations.add("ffn." + SWIGLU.get(name, name))
        elif name in MLP_PARTS or name in ("fc", "proj"):
            locations.add("ffn." + MLP_PARTS.get(name, name))
        else:
            raise ValueError(f"LoRA: unknown target module {name!r}; use one of {list(KNOWN)}")
    if "attn.c_attn" in locations and locations & {"attn.wq", "attn.wk", "attn.wv"}:
        raise ValueError("LoRA: c_attn already covers q, k and v; do not also target q_proj, k_proj or v_proj")
    return locations
