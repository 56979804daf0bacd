"""Config files and config dataclasses: the one JSON reader and the one dict -> dataclass step.

    spec = read_config("my.json")                      # {"model": {...}, "train": {...}}
    config = config_from_dict(ModelConfig, spec["model"])

Both raise ValueError with a one-line message that names the file or the dataclass, which the
command line prints as it is.
"""
import json
import os
from dataclasses import fields


def read_config(path, what="config"):
    """The JSON object in the file at path. A missing, unreadable, non-UTF-8 or invalid file, or one
    holding something other than an object, raises ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist") from None
    except OSError as error:
        raise ValueError(f"cannot read {what} file {os.fspath(path)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not UTF-8 (bad byte at offset {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} file {os.fspath(path)!r} must hold a JSON object, not a {type(value).__name__}")
    return value


def config_from_dict(cls, values):
    """cls(**values) for a config dataclass, naming any key it does not have."""
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__}: expected a dict of settings, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**values)
