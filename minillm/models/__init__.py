"""Models: the decoder-only language model, the encoder-only model (BERT) and the encoder-decoder
(T5-style), their configs, pooling for sentence embeddings, and the named presets (small JSON files
in presets/).

A model config's "family" key picks the family: "decoder" (the default, so configs and checkpoints
written before the other families existed load as they did), "encoder" or "encoder_decoder".
"""
import json
import os

import numpy as np

from ..config import config_from_dict
from .decoder import DecoderLM, ModelConfig
from .encoder import EncoderConfig, EncoderModel
from .encoder_decoder import EncoderDecoderModel, Seq2SeqConfig

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
FAMILIES = {"decoder": (ModelConfig, DecoderLM), "encoder": (EncoderConfig, EncoderModel),
            "encoder_decoder": (Seq2SeqConfig, EncoderDecoderModel)}


def family_of(config):
    """"decoder", "encoder" or "encoder_decoder": the family of a model config (object or dict)."""
    if isinstance(config, dict):
        family = config.get("family", "decoder")
        if family not in FAMILIES:
            raise ValueError(f"model family must be one of {sorted(FAMILIES)}, got {family!r}")
        return family
    return getattr(config, "family", "decoder")


def model_config_from_dict(values, where=None):
    """The config of the family values["family"] names (default "decoder": a ModelConfig); where
    (e.g. "config file 'my.json': model") starts any error message."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'model config'}: expected a dict of settings, got {type(values).__name__}")
    family = family_of(values)
    values = dict(values)
    if family == "decoder":
        values.pop("family", None)
    return config_from_dict(FAMILIES[family][0], values, where)


def build_model(config, rng=None, dtype=np.float32):
    """The model of a config of any family, freshly initialised."""
    return FAMILIES[family_of(config)][1](config, rng=rng, dtype=dtype)


def preset_names():
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".json"))


def load_preset(name):
    """{"description", "model": ModelConfig fields, "train": TrainConfig fields} of a named preset."""
    path = os.path.join(PRESET_DIR, f"{name}.json")
    if not os.path.exists(path):
        raise ValueError(f"unknown preset {name!r}; the presets are {preset_names()}")
    with open(path) as f:
        return json.load(f)


__all__ = ["DecoderLM", "ModelConfig", "EncoderModel", "EncoderConfig", "EncoderDecoderModel", "Seq2SeqConfig",
           "FAMILIES", "family_of", "model_config_from_dict", "build_model", "load_preset", "preset_names"]
