"""What loading checks in a checkpoint's files, since a checkpoint may come from anywhere.

- The digests in state.json are required, and must cover model.safetensors (and
  optimizer.safetensors to resume). Each name they hold must be a relative path inside the
  checkpoint (no absolute path, no `..`, nothing that resolves outside it) naming a regular file
  (not a directory, a device or a FIFO: /dev/zero would never end), read no further than its size.
- safetensors' own loader refuses malformed headers; then every array must be numeric and every
  floating-point array finite (a NaN weight is named, not loaded).
- A parameter must get a floating-point array (an int32 tensor where a float32 weight belongs is
  refused, not cast), and config.json must describe a model of about the size the weights have, so
  a corrupt config cannot make the loader build a model of a billion layers first.

Every failure is a CheckpointError: one line naming the file and the field or tensor.
"""
import hashlib
import os
import re

import numpy as np

_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


def sha256(path):
    """The SHA-256 of a regular file, reading no more than its size when opened."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = os.fstat(f.fileno()).st_size
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def listing(directory):
    """The relative names ("tokenizer/vocab.tiktoken") of the regular files under directory, but
    state.json (which holds their digests), sorted."""
    names = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), directory).replace(os.sep, "/")
            if rel != "state.json":
                names.append(rel)
    return sorted(names)


def confined(directory, name, where):
    """The path of the file `name` (a digest key) inside directory, or CheckpointError."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or name.startswith("/") or "\\" in name or ":" in name or name == "state.json"
            or any(p in ("", ".", "..") for p in parts)):
        raise CheckpointError(f"{where}: digests name {name!r}, which is not a file inside the checkpoint")
    path = os.path.join(directory, *parts)
    root = os.path.realpath(directory)
    if not os.path.realpath(path).startswith(root + os.sep):
        raise CheckpointError(f"{where}: digests name {name!r}, which leads outside the checkpoint")
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint file {path!r} is missing")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} is not a regular file")
    return path


def verify_digests(directory, state, wanted):
    """Check every file state["digests"] names against its SHA-256; wanted: names that must be there."""
    where = f"checkpoint state file {os.path.join(directory, 'state.json')!r}"
    digests = state.get("digests")
    if digests is None:
        raise CheckpointError(f"{where} has no 'digests': its files cannot be checked (the checkpoint is corrupt)")
    for name in wanted:
        if name not in digests:
            if name == "optimizer.safetensors":
                raise CheckpointError(f"checkpoint {directory!r} has no optimizer state to resume from")
            raise CheckpointError(f"{where}: digests do not cover {name} (the checkpoint is corrupt)")
    for name, digest in digests.items():
        path = confined(directory, name, where)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise CheckpointError(f"{where}: digests.{name} must be a SHA-256 (64 hex digits), got {digest!r:.50}")
        try:
            actual = sha256(path)
        except OSError as error:                         # e.g. removed by a save since it was found
            raise CheckpointError(f"cannot read checkpoint file {path!r}: {error.strerror or error}") from None
        if actual != digest:
            raise CheckpointError(f"checkpoint file {path!r} is corrupt (its SHA-256 does not match state.json)")


def load_arrays(path):
    """{name: array} of a safetensors file, every array numeric and, if floating point, finite."""
    from safetensors.numpy import load_file
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint file {path!r} is missing")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} is not a regular file")
    try:
        arrays = load_file(path)
    except Exception as error:  # safetensors raises its own errors on a damaged file
        raise CheckpointError(f"checkpoint file {path!r} is corrupt: {str(error).splitlines()[0][:200]}") from None
    for name, array in arrays.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise CheckpointError(f"checkpoint file {path!r}: tensor {name!r} has dtype {array.dtype}, not a number")
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise CheckpointError(f"checkpoint file {path!r}: tensor {name!r} holds NaN or infinite values")
    return arrays


def check_state_arrays(model, arrays, path):
    """Refuse arrays that are not floating point where model has a (float) parameter."""
    for name, p in model.named_parameters():
        if name in arrays and not np.issubdtype(arrays[name].dtype, np.floating):
            raise CheckpointError(f"checkpoint file {path!r}: tensor {name!r} is {arrays[name].dtype}, but the "
                                  f"model's weight is {p.data.dtype}")


def check_optimizer_arrays(model, arrays, path):
    """Each optimizer slot "<parameter>.<slot>" must be a float array of its parameter's shape, except
    AdamW's per-parameter step count "<parameter>.step": one non-negative int64."""
    params = dict(model.named_parameters())
    for key, array in arrays.items():
        name, slot = key.rsplit(".", 1) if "." in key else (key, "")
        if name not in params:
            continue
        if slot == "step":
            if np.shape(array) != (1,) or array.dtype != np.int64 or int(array[0]) < 0:
                raise CheckpointError(f"checkpoint file {path!r}: tensor {key!r} is {array.dtype} {np.shape(array)}, "
                                      f"but a step count is one non-negative int64")
        elif np.shape(array) != params[name].shape or not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(f"checkpoint file {path!r}: tensor {key!r} is {array.dtype} {np.shape(array)}, "
                                  f"but its parameter is {params[name].data.dtype} {params[name].shape}")


def check_config_fits(config, arrays, where):
    """Before a model is built from config: its size must be about what the weights hold."""
    from .scaling.counts import count_parameters
    held = sum(int(a.size) for a in arrays.values())
    try:
        wanted = count_parameters(config)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return
    if wanted > 2 * held + 1_000_000:        # quantized weights pack two values a byte; leave room (count is closed-form)
        raise CheckpointError(f"{where}: the model config describes {wanted:,} parameters but model.safetensors "
                              f"holds {held:,} values; the config does not match the weights")
    wte = arrays.get("wte.weight")
    if wte is not None and wte.shape != (config.vocab_size, config.n_embd):
        raise CheckpointError(f"{where}: vocab_size {config.vocab_size} and n_embd {config.n_embd} do not match "
                              f"the weights' token table wte.weight {tuple(wte.shape)}")
