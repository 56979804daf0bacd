"""Checkpoints: a directory with
    config.json          the model config and the tokenizer entry (its files are in tokenizer/)
    model.safetensors    the weights
    optimizer.safetensors the optimizer's moments (training checkpoints only)
    state.json           step, training config, RNG states, and the SHA-256 of the files above

Every file is written to a temporary name and renamed into place, state.json last: a reader
never sees a half-written file, and a checkpoint whose files do not match state.json's digests
is reported as corrupt instead of being loaded.
"""
import hashlib
import os

import numpy as np

from .config import read_config
from .data import save_tokenizer, tokenizer_from_dict
from .files import write_atomically, write_json
from .models import build_model as build_family_model
from .models import family_of, model_config_from_dict
from .nn.quantized import check_quantized_weights, quantize_model

FORMAT = "minillm-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


def _save_arrays(path, arrays):
    from safetensors.numpy import save_file
    write_atomically(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory, model, tokenizer, optimizer=None, state=None):
    """Write model (and optimizer) to directory; state: a JSON-able dict (step, configs, rng, ...)."""
    os.makedirs(directory, exist_ok=True)
    config = {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": save_tokenizer(tokenizer, directory)}
    if getattr(model, "quantization", None):
        config["quantization"] = {"scheme": model.quantization}
    write_json(os.path.join(directory, "config.json"), config)
    files = {"model.safetensors": model.state_dict()}
    if optimizer is not None:
        files["optimizer.safetensors"] = optimizer.state_dict()["state"]
    for name, arrays in files.items():
        _save_arrays(os.path.join(directory, name), arrays)
    state = dict(state or {})
    if optimizer is not None:
        state["optimizer_step"] = optimizer.step_count
    state["digests"] = {name: _sha256(os.path.join(directory, name)) for name in files}
    write_json(os.path.join(directory, "state.json"), state)


def _read_json(path, what):
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {os.path.dirname(path)!r} has no {what} ({os.path.basename(path)})")
    try:
        return read_config(path, f"checkpoint {what}")
    except ValueError as error:
        raise CheckpointError(f"{error} (the checkpoint is corrupt)") from None


def _load_arrays(path):
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path!r} is missing") from None
    except Exception as error:  # safetensors raises its own errors on a damaged file
        raise CheckpointError(f"checkpoint file {path!r} is corrupt: {error}") from None


def load_checkpoint(directory, optimizer_wanted=False):
    """Read a checkpoint directory: {"config", "model" arrays, "optimizer" arrays or None, "state"}."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory!r} does not exist")
    config = _read_json(os.path.join(directory, "config.json"), "config")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{directory!r} is not a minillm checkpoint (format {config.get('format')!r})")
    state = _read_json(os.path.join(directory, "state.json"), "state")
    for name, digest in state.get("digests", {}).items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint file {path!r} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"checkpoint file {path!r} is corrupt (its SHA-256 does not match state.json)")
    model = _load_arrays(os.path.join(directory, "model.safetensors"))
    optimizer = None
    if optimizer_wanted:
        if "optimizer.safetensors" not in state.get("digests", {}):
            raise CheckpointError(f"checkpoint {directory!r} has no optimizer state to resume from")
        optimizer = _load_arrays(os.path.join(directory, "optimizer.safetensors"))
    return {"config": config, "model": model, "optimizer": optimizer, "state": state, "directory": directory}


def build_model(checkpoint):
    """The model (DecoderLM, or the family config.json names) and tokenizer a loaded checkpoint
    describes, with its weights (quantized modules in place if config.json names a quantization
    scheme; see minillm/nn/quantized.py)."""
    try:
        config = model_config_from_dict(checkpoint["config"]["model"])
        tokenizer = tokenizer_from_dict(checkpoint["config"]["tokenizer"], checkpoint["directory"])
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint config is invalid: {error}") from None
    model = build_family_model(config)
    quantization = checkpoint["config"].get("quantization")
    if quantization and family_of(config) != "decoder":
        raise CheckpointError(f"checkpoint {checkpoint['directory']!r}: only decoder models are quantized")
    if quantization:
        try:
            quantize_model(model, quantization["scheme"], skeleton=True)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint quantization {quantization!r} is invalid: {error}") from None
        if not any(key.endswith(".q") for key in checkpoint["model"]):
            raise CheckpointError(f"checkpoint {checkpoint['directory']!r}: config.json says it is quantized "
                                  f"({quantization.get('scheme')}) but model.safetensors holds float weights")
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint weights do not match its config: {error}") from None
    if quantization:
        try:
            check_quantized_weights(model)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {checkpoint['directory']!r} has invalid quantized weights: {error}") from None
    return model, tokenizer
