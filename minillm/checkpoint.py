"""Checkpoints, saved so that a kill at any instant leaves the previous one or the new one.

A checkpoint is a directory of files:
    config.json            the model config and the tokenizer entry (its files are in tokenizer/)
    model.safetensors      the weights
    optimizer.safetensors  the optimizer's moments (training checkpoints only)
    state.json             step, training config, RNG states, and the SHA-256 of every file above

A run's directory (`--out`) holds its checkpoints and a pointer naming the committed one:
    out/run/latest               "checkpoint-500": the one checkpoint a reader loads
    out/run/checkpoint-500/      the files above
    out/run/train_log.jsonl, cache/, .minillm.lock, ...

save_checkpoint (one atomic commit, as SQLite's journal or LevelDB's CURRENT file):
    1. write every file into a fresh hidden directory out/run/.tmp-<pid>-<n>/ and fsync each;
    2. rename that directory to checkpoint-<step> and fsync out/run;
    3. replace `latest` atomically (minillm/files.py: temporary file, fsync, rename, fsync): the commit;
    4. remove the checkpoint it superseded and anything a killed save left (.tmp-*, latest.tmp*).
Before step 3 a reader still loads the previous checkpoint; after it, the new one, whole. The
writer holds the directory's lock (files.DirectoryLock) throughout, so there is one writer.

load_checkpoint follows `latest` (or reads a directory that is itself a checkpoint: older runs
were saved flat, and a checkpoint-N directory copied elsewhere loads as it is), checks every JSON
field's type, requires the digests and checks each file they name (a regular file inside the
checkpoint), and refuses weights that are not finite. If a save replaces the checkpoint while it
is being read, the reader starts again on the new one. Every problem is a CheckpointError with a
one-line message naming the file and the field.

fault_hook (or MINILLM_SAVE_FAULT=k: the process exits at the k-th point) is called with the name
of each point of a save, for the tests that kill a save at every point.
"""
import itertools
import os
import re
import secrets
import shutil

import numpy as np

from . import checkpoint_files as files_check
from .checkpoint_files import CheckpointError, check_state_arrays, sha256
from .config import check_fields, read_config
from .data import save_tokenizer, tokenizer_from_dict
from .files import DirectoryLock, fsync_directory, fsync_file, try_lock, write_atomically, write_json
from .models import build_model as build_family_model
from .models import family_of, model_config_from_dict
from .nn.quantized import check_quantized_weights, quantize_model

FORMAT = "minillm-checkpoint-1"
POINTER = "latest"
_NAME = re.compile(r"checkpoint-\d+(\.\d+)?")
_STALE = re.compile(r"\.tmp-.*|latest\.tmp.*|.+\.tmp\d+-[0-9a-f]{8}.*")   # what killed saves leave behind
LEGACY_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
fault_hook = None
_counter = itertools.count()

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "build_model", "resolve_checkpoint",
           "has_checkpoint", "checkpoint_leftovers", "discard_checkpoint", "clean_stale", "read_checkpoint_meta",
           "load_weights"]


def _point(name):
    """One point of a save, where the tests kill or fail it."""
    if fault_hook is not None:
        fault_hook(name)
    at = os.environ.get("MINILLM_SAVE_FAULT")
    if at:
        _point.count = getattr(_point, "count", 0) + 1
        if str(_point.count) == at:
            os._exit(17)


# ---- the layout -----------------------------------------------------------------------------

def _read_pointer(directory):
    """The checkpoint name in directory/latest, or None when there is no pointer."""
    path = os.path.join(directory, POINTER)
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint pointer {path!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read(257)
        name = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read checkpoint pointer {path!r}: {error}") from None
    if not _NAME.fullmatch(name):
        raise CheckpointError(f"checkpoint pointer {path!r} is corrupt: it must name a checkpoint-<step> directory "
                              f"beside it, got {raw[:40]!r}")
    return name


def resolve_checkpoint(directory):
    """The directory of the committed checkpoint: directory/<name in latest>, or directory itself
    when it has no pointer (a checkpoint saved flat)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory!r} does not exist" if not os.path.exists(directory)
                              else f"checkpoint {directory!r} is not a directory")
    name = _read_pointer(directory)
    if name is None:
        return directory
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint pointer {os.path.join(directory, POINTER)!r} names {name!r}, "
                              f"which is not a directory in {directory!r}")
    return path


def has_checkpoint(directory):
    """Whether directory holds a committed checkpoint (a pointer, or a flat state.json)."""
    return os.path.lexists(os.path.join(directory, POINTER)) or os.path.exists(os.path.join(directory, "state.json"))


def checkpoint_leftovers(directory):
    """The names in directory that belong to checkpoints (to be refused without --overwrite). The
    temporaries of killed saves are not among them: they are never data, and the next save removes them."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if n in LEGACY_FILES or n == POINTER or _NAME.fullmatch(n))


def discard_checkpoint(directory):
    """Make directory hold no committed checkpoint (for --overwrite): remove the pointer and a flat
    state.json. The files go at the next save, which cleans what is not committed."""
    for name in (POINTER, "state.json"):
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            os.remove(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass


def _legacy_checkpoint_files(directory):
    """The files of a flat checkpoint at directory's top level (to go once a checkpoint-N replaces it)."""
    names = [n for n in LEGACY_FILES if os.path.exists(os.path.join(directory, n))]
    try:
        config = read_config(os.path.join(directory, "config.json"))
    except ValueError:
        return names
    if config.get("format") == FORMAT:
        tokenizer = config.get("tokenizer")
        if isinstance(tokenizer, dict) and tokenizer.get("path") == "tokenizer":
            names.append("tokenizer")
        names.append("config.json")
    return names


def clean_stale(directory, keep=None):
    """Remove what is not the committed checkpoint: temporaries of killed saves, checkpoint-N
    directories other than `keep`, and (once there is a pointer) a flat checkpoint's files. Only
    a process holding the directory's lock may call it."""
    stale = [n for n in os.listdir(directory) if _STALE.fullmatch(n) or (_NAME.fullmatch(n) and n != keep)]
    if keep is not None:
        stale += _legacy_checkpoint_files(directory)
    for name in stale:
        _remove(os.path.join(directory, name))
    return stale


def _clean_if_idle(directory):
    """When a reader finds leftovers of a killed save and no process is writing: remove them."""
    current = _read_pointer_or_none(directory)
    if not any(_STALE.fullmatch(n) or (_NAME.fullmatch(n) and n != current) for n in os.listdir(directory)):
        return
    lock = try_lock(directory)
    if lock is None:
        return
    try:
        clean_stale(directory, keep=_read_pointer(directory))
    except (OSError, CheckpointError):
        pass
    finally:
        lock.release()


# ---- saving ---------------------------------------------------------------------------------

def _save_arrays(path, arrays):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
    fsync_file(path)


def _new_name(directory, step):
    base = f"checkpoint-{step if isinstance(step, int) and step >= 0 else 0}"
    for k in itertools.count():
        name = base if k == 0 else f"{base}.{k}"
        if not os.path.lexists(os.path.join(directory, name)):
            return name


def save_checkpoint(directory, model, tokenizer, optimizer=None, state=None):
    """Write model (and optimizer) as the new committed checkpoint of directory; state: a JSON-able
    dict (step, configs, rng, ...). Returns the new checkpoint's directory."""
    directory = os.fspath(directory)
    with DirectoryLock(directory):
        clean_stale(directory, keep=_read_pointer_or_none(directory))
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}")
        os.makedirs(tmp)
        try:
            _point("start")
            config = {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": save_tokenizer(tokenizer, tmp)}
            _point("tokenizer")
            if getattr(model, "quantization", None):
                config["quantization"] = {"scheme": model.quantization}
            write_json(os.path.join(tmp, "config.json"), config)
            _point("config.json")
            files = {"model.safetensors": model.state_dict()}
            if optimizer is not None:
                files["optimizer.safetensors"] = optimizer.state_dict()["state"]
            for name, arrays in files.items():
                _save_arrays(os.path.join(tmp, name), arrays)
                _point(name)
            state = dict(state or {})
            if optimizer is not None:
                state["optimizer_step"] = optimizer.step_count
            state["digests"] = {name: sha256(os.path.join(tmp, *name.split("/"))) for name in files_check.listing(tmp)}
            write_json(os.path.join(tmp, "state.json"), state)
            _point("state.json")
            for sub in {os.path.dirname(os.path.join(tmp, *n.split("/"))) for n in state["digests"]}:
                fsync_directory(sub)
            name = _new_name(directory, state.get("step"))
            os.rename(tmp, os.path.join(directory, name))
            _point("renamed")
            fsync_directory(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        def write_pointer(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(name + "\n")
            _point("pointer written")
        write_atomically(os.path.join(directory, POINTER), write_pointer)       # the commit
        _point("committed")
        clean_stale(directory, keep=name)
        _point("cleaned")
    return os.path.join(directory, name)


def _read_pointer_or_none(directory):
    try:
        return _read_pointer(directory)
    except CheckpointError:
        return None


# ---- loading --------------------------------------------------------------------------------

CONFIG_SCHEMA = {"format": str, "model": dict, "tokenizer": dict, "quantization": (dict, None)}
STATE_SCHEMA = {"step": int, "train_config": dict, "best_val": (float, None), "losses": (dict, None),
                "rng": dict, "optimizer_step": int, "digests": dict}


def _read_json(path, what, schema):
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint {os.path.dirname(path)!r} has no {what} ({os.path.basename(path)})")
    if not os.path.isfile(path):                         # a directory, a FIFO, a device: never opened
        raise CheckpointError(f"checkpoint {what} file {path!r} is not a regular file")
    try:
        values = read_config(path, f"checkpoint {what}")
        if isinstance(values.get("best_val"), float) and values["best_val"] == float("inf"):
            values["best_val"] = None                    # written as Infinity before any evaluation
        return check_fields(values, schema, f"checkpoint {what} file {path!r}")
    except ValueError as error:
        raise CheckpointError(f"{error} (the checkpoint is corrupt)") from None


def _load_once(path, optimizer_wanted):
    config = _read_json(os.path.join(path, "config.json"), "config", CONFIG_SCHEMA)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a minillm checkpoint (format {config.get('format')!r})")
    if config.get("quantization") is not None:
        check_fields(config["quantization"], {"scheme": str}, f"checkpoint config file "
                     f"{os.path.join(path, 'config.json')!r}: quantization", required=("scheme",))
    state = _read_json(os.path.join(path, "state.json"), "state", STATE_SCHEMA)
    wanted = ["model.safetensors"] + (["optimizer.safetensors"] if optimizer_wanted else [])
    files_check.verify_digests(path, state, wanted)
    model = files_check.load_arrays(os.path.join(path, "model.safetensors"))
    optimizer = files_check.load_arrays(os.path.join(path, "optimizer.safetensors")) if optimizer_wanted else None
    try:
        tokenizer = tokenizer_from_dict(config["tokenizer"], path)
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint config is invalid: {error}") from None
    return {"config": config, "model": model, "optimizer": optimizer, "state": state, "directory": path,
            "tokenizer": tokenizer}


def read_checkpoint_meta(directory):
    """The committed checkpoint's config.json and state.json, checked, without its arrays:
    {"config", "state", "directory"} (for deciding about a run before loading it)."""
    path = resolve_checkpoint(directory)
    return {"config": _read_json(os.path.join(path, "config.json"), "config", CONFIG_SCHEMA),
            "state": _read_json(os.path.join(path, "state.json"), "state", STATE_SCHEMA), "directory": path}


def load_checkpoint(directory, optimizer_wanted=False):
    """Read a checkpoint: {"config", "model" arrays, "optimizer" arrays or None, "state",
    "tokenizer", "directory" (the checkpoint's own directory, e.g. out/run/checkpoint-500)}. Every
    file is read here, so a save that removes this checkpoint afterwards takes nothing from it."""
    for attempt in range(20):
        path = resolve_checkpoint(directory)
        try:
            checkpoint = _load_once(path, optimizer_wanted)
        except CheckpointError:
            if attempt < 19 and resolve_checkpoint(directory) != path:
                continue                           # a save replaced it while we read: read the new one
            raise
        if path != os.fspath(directory):
            _clean_if_idle(os.fspath(directory))
        return checkpoint
    raise AssertionError("unreachable")


def build_model(checkpoint):
    """The model (DecoderLM, or the family config.json names) and tokenizer a loaded checkpoint
    describes, with its weights (quantized modules in place if config.json names a quantization
    scheme; see minillm/nn/quantized.py)."""
    where = f"checkpoint config file {os.path.join(checkpoint['directory'], 'config.json')!r}"
    try:
        config = model_config_from_dict(checkpoint["config"]["model"], f"{where}: model")
        files_check.check_config_fits(config, checkpoint["model"], where)
        tokenizer = checkpoint.get("tokenizer") or tokenizer_from_dict(checkpoint["config"]["tokenizer"],
                                                                      checkpoint["directory"])
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint config is invalid: {error}" if not str(error).startswith("checkpoint")
                              else str(error)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                              f"vocab_size {config.vocab_size}")
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
    load_weights(model, checkpoint)
    if quantization:
        try:
            check_quantized_weights(model)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {checkpoint['directory']!r} has invalid quantized weights: {error}") from None
    return model, tokenizer


def load_weights(model, checkpoint):
    """Copy a loaded checkpoint's weights into model, refusing any that are not floating point where
    the model has a float parameter."""
    check_state_arrays(model, checkpoint["model"], os.path.join(checkpoint["directory"], "model.safetensors"))
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint weights do not match its config: {error}") from None
