"""LoRA adapters in peft's files: adapter_model.safetensors + adapter_config.json.

peft saves only the adapters, under the base model's Hugging Face module names (minillm/io/hf.py)
with the adapter name dropped:

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight   (r, in)     Llama
    base_model.model.model.layers.{i}.mlp.down_proj.lora_B.weight      (out, r)
    base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight       (r, C)      GPT-2
    base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight       (3C, r)     (q, k, v rows)

minillm's adapters have the same shapes: lora_A (r, in), lora_B (out, r), and GPT-2's Conv1D
layers need no transpose (peft applies (B A)^T to a Conv1D's (in, out) weight, fan_in_fan_out).
adapter_config.json holds peft's LoraConfig fields; peft reads it with LoraConfig.from_pretrained.
"""
import json
import os

from .errors import FormatError
from .files import read_safetensors, write_json, write_safetensors

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
# minillm's adapter (under blocks.{i}.) -> the HF module it adapts (under the layer)
LLAMA_ADAPTERS = {"attn.wq.adapter": "self_attn.q_proj", "attn.wk.adapter": "self_attn.k_proj",
                  "attn.wv.adapter": "self_attn.v_proj", "attn.wo.adapter": "self_attn.o_proj",
                  "ffn.gate_adapter": "mlp.gate_proj", "ffn.up_adapter": "mlp.up_proj",
                  "ffn.down_adapter": "mlp.down_proj"}
GPT2_ADAPTERS = {"attn.c_attn_adapter": "attn.c_attn", "attn.wo.adapter": "attn.c_proj",
                 "ffn.fc.adapter": "mlp.c_fc", "ffn.proj.adapter": "mlp.c_proj"}
PEFT_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w_gate": "gate_proj",
              "w_up": "up_proj", "w_down": "down_proj", "fc": "c_fc", "proj": "c_proj"}


def _prefix(arch, i):
    return f"base_model.model.model.layers.{i}." if arch == "llama" else f"base_model.model.transformer.h.{i}."


def peft_keys(adapters, arch):
    """{minillm adapter parameter name: array} -> {peft key: array}."""
    table = LLAMA_ADAPTERS if arch == "llama" else GPT2_ADAPTERS
    out = {}
    for name, value in adapters.items():
        _, i, rest = name.split(".", 2)                      # blocks, i, attn.wq.adapter.lora_A
        where, _, matrix = rest.rpartition(".")
        if where not in table:
            raise ValueError(f"save adapter: {name} has no place in peft's {arch} layout")
        out[f"{_prefix(arch, i)}{table[where]}.{matrix}.weight"] = value
    return out


def minillm_keys(tensors, arch, where):
    """{peft key: array} -> {minillm adapter parameter name: array}; FormatError for a key elsewhere."""
    inverse = {v: k for k, v in (LLAMA_ADAPTERS if arch == "llama" else GPT2_ADAPTERS).items()}
    layers = "base_model.model.model.layers." if arch == "llama" else "base_model.model.transformer.h."
    out = {}
    for key, value in tensors.items():
        rest = key.removeprefix(layers)
        module, _, tail = rest.rpartition(".lora_")
        i, _, module = module.partition(".")
        matrix = "lora_" + tail.removesuffix(".weight").removesuffix(".default")
        if rest == key or not i.isdigit() or module not in inverse or matrix not in ("lora_A", "lora_B"):
            raise FormatError(f"{where}: tensor {key} is not a LoRA matrix of a {arch} model minillm knows "
                              "(minillm loads adapters on attention and MLP projections only)")
        out[f"blocks.{i}.{inverse[module]}.{matrix}"] = value
    return out


def peft_config(config, arch, base=None):
    """adapter_config.json's fields for a minillm LoraConfig."""
    targets = set()
    for name in config.target_modules or (["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]):
        name = PEFT_NAMES.get(name, name)
        if arch == "gpt2" and name in ("wq", "wk", "wv"):
            name = "c_attn"
        targets.add(name)
    init = config.init_lora_weights
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": config.r,
            "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": sorted(targets), "use_rslora": config.use_rslora,
            "init_lora_weights": True if init == "default" else init, "layers_to_transform": config.layers_to_transform,
            "fan_in_fan_out": arch == "gpt2", "bias": "none", "modules_to_save": None, "inference_mode": True,
            "revision": None}


def write_adapter(directory, adapters, config, arch, base=None):
    """Write adapters ({minillm name: array}) and config in peft's format into directory."""
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, ADAPTER_WEIGHTS), peft_keys(adapters, arch), {"format": "pt"})
    write_json(os.path.join(directory, ADAPTER_CONFIG), peft_config(config, arch, base))


def read_adapter(directory, arch):
    """(adapter_config.json as a dict, {minillm adapter name: float32 array}) from a peft adapter directory."""
    config_path, weights_path = (os.path.join(directory, f) for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FormatError(f"{directory!r} is not a LoRA adapter directory: {os.path.basename(path)} is missing")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise FormatError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise FormatError(f"{config_path}: not a LoRA adapter config (peft_type {config.get('peft_type')!r})"
                          if isinstance(config, dict) else f"{config_path}: not a JSON object")
    return config, minillm_keys(read_safetensors(weights_path), arch, weights_path)
