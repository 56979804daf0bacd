"""Models: the decoder-only language model and its named presets (small JSON files in presets/)."""
import json
import os

from .decoder import DecoderLM, ModelConfig

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def preset_names():
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".json"))


def load_preset(name):
    """{"description", "model": ModelConfig fields, "train": TrainConfig fields} of a named preset."""
    path = os.path.join(PRESET_DIR, f"{name}.json")
    if not os.path.exists(path):
        raise ValueError(f"unknown preset {name!r}; the presets are {preset_names()}")
    with open(path) as f:
        return json.load(f)


__all__ = ["DecoderLM", "ModelConfig", "load_preset", "preset_names"]
