"""LoRA and QLoRA, the front door: adapt a model, train its adapters, save them in peft's format, load
them (ours or peft's) onto the same base, merge them in.

    from minillm.lora import LoraConfig, apply_lora, save_adapter, load_adapter, merge_lora
    model = load_pretrained("smollm2-135m-instruct")
    apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    ...train...
    save_adapter(model, "out/adapter")        # adapter_model.safetensors + adapter_config.json
    load_adapter(fresh_base, "out/adapter")   # also a directory written by peft's save_pretrained

The layers are minillm/nn/lora.py (the formulas), the file layout minillm/io/peft.py.
"""
from contextlib import contextmanager

import numpy as np

from .io.errors import FormatError
from .io.hf import family
from .io.peft import read_adapter, write_adapter
from .nn.lora import (LoraConfig, adapter_shapes, adapter_state_dict, apply_lora, lora_layers, merge_lora, set_adapter_rng,
                      trainable_parameters)
from .nn.lora_config import KNOWN

__all__ = ["LoraConfig", "apply_lora", "merge_lora", "save_adapter", "load_adapter", "adapter_state_dict",
           "trainable_parameters", "lora_layers", "set_adapter_rng", "config_from_peft", "disabled_adapters"]


def save_adapter(model, directory, base=None):
    """Write model's adapters alone, as peft does (base: the base model's name or path, recorded)."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("save_adapter: the model has no LoRA adapters (apply_lora first)")
    write_adapter(directory, adapter_state_dict(model), config, family(model.config), base)


def config_from_peft(fields, where):
    """A LoraConfig from adapter_config.json's fields (peft's or ours)."""
    targets = fields.get("target_modules")
    if isinstance(targets, str):
        if targets not in KNOWN:
            raise FormatError(f"{where}: target_modules {targets!r} is a pattern; minillm loads adapters whose "
                              f"target_modules list module names ({', '.join(KNOWN[:7])}, ...)")
        targets = [targets]
    layers = fields.get("layers_to_transform")
    init = fields.get("init_lora_weights", True)
    try:
        return LoraConfig(r=fields["r"], lora_alpha=fields.get("lora_alpha", fields["r"]),
                          lora_dropout=fields.get("lora_dropout", 0.0), target_modules=targets,
                          use_rslora=bool(fields.get("use_rslora", False)),
                          init_lora_weights=init if init in (True, False, "default", "gaussian") else True,
                          layers_to_transform=[layers] if isinstance(layers, int) else layers)
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(f"{where}: not a LoRA config minillm can use ({error})") from None


def load_adapter(model, directory):
    """Wrap model's layers as the adapter in directory says and load its matrices, in place; returns
    the model. The shapes must fit this base; nothing is changed when the files do not fit."""
    fields, arrays = read_adapter(directory, family(model.config))
    config = config_from_peft(fields, f"{directory}/adapter_config.json")
    for key in ("fan_in_fan_out",):
        if key in fields and bool(fields[key]) != (family(model.config) == "gpt2"):
            raise FormatError(f"{directory}: fan_in_fan_out={fields[key]} does not fit a {family(model.config)} base")
    probe = adapter_shapes(model, config)
    if set(arrays) != set(probe):
        missing, extra = sorted(set(probe) - set(arrays)), sorted(set(arrays) - set(probe))
        raise FormatError(f"{directory}: the adapter's matrices do not match its config on this model "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, array in arrays.items():
        if array.shape != probe[name]:
            raise FormatError(f"{directory}: {name} has shape {array.shape}; this base needs {probe[name]} "
                              "(an adapter for another model?)")
    apply_lora(model, config, rng=np.random.default_rng(0))
    params = dict(model.named_parameters())
    for name, array in arrays.items():
        params[name].data = np.array(array, dtype=params[name].dtype)
    return model


@contextmanager
def disabled_adapters(model):
    """Within the block, model runs as its base: every unmerged LoRA layer skips its adapter (the flag
    `merged` makes forward and infer run the plain weights; nothing is folded, so nothing changes)."""
    layers = [layer for _, layer in lora_layers(model) if not layer.merged]
    for layer in layers:
        layer.merged = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.merged = False
