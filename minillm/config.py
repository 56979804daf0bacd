"""Config files and config dataclasses: the one JSON reader, the one dict -> dataclass step, and
the checks of single values that config files and command-line flags share.

    spec = read_config("my.json")                    # {"model": {...}, "train": {...}}
    config = config_from_dict(ModelConfig, spec["model"], where="config file 'my.json': model")
    check_fields(state, {"step": int, "best_val": (float, None)}, "state file 'x/state.json'")
    parser.add_argument("--lr", type=positive_float)  # an argparse type: a one-line error naming the flag

A field's kind is a Python type or a tuple of them: int (not a bool), float (any finite number),
str, bool, dict (a JSON object), list, or None (JSON null). config_from_dict takes the kinds from
the dataclass's annotations (`int | None` is (int, None)), so a string where a number belongs, a
list where an object belongs, or a null, is refused before any code uses it.

Everything raises ValueError (the argparse types: argparse.ArgumentTypeError) with a one-line
message naming the file and the field, or the flag, which the command line prints as it is.
"""
import argparse
import json
import math
import os
import types
import typing
from dataclasses import fields

NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false", dict: "an object",
         list: "a list", None: "null"}


def read_config(path, what="config"):
    """The JSON object in the file at path. A missing, unreadable, non-UTF-8 or invalid file, or one
    holding something other than an object, raises ValueError naming the file. Only a regular file
    is opened (a FIFO or a device would block or never end)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{what} file {os.fspath(path)!r} is not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist") from None
    except OSError as error:
        raise ValueError(f"cannot read {what} file {os.fspath(path)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not UTF-8 (bad byte at offset {error.start})") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} file {os.fspath(path)!r} must hold a JSON object, not a {type(value).__name__}")
    return value


# ---- the kind of one value ------------------------------------------------------------------

def describe(value):
    """A short description of a value for an error message: its JSON kind and a clipped repr."""
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return "null" if value is None else f"{type(value).__name__} {text}"


def is_kind(value, kind):
    """Whether value is of kind (a type, None, or a tuple of them; see the module docstring)."""
    if isinstance(kind, tuple):
        return any(is_kind(value, k) for k in kind)
    if kind is None:
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def kind_name(kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def check_kind(value, kind, where):
    """value, if it is of kind; else ValueError "<where> must be <kind>, got <value>"."""
    if not is_kind(value, kind):
        name = kind_name(kind)
        if isinstance(value, float) and not math.isfinite(value) and "a number" in name:
            name = name.replace("a number", "a finite number")
        raise ValueError(f"{where} must be {name}, got {describe(value)}")
    return value


def check_fields(values, schema, where, required=()):
    """values (a dict) with each key of schema that it holds checked against its kind, and each key
    of required present. where names the object in messages: "<where>: <key> must be ..."."""
    check_kind(values, dict, where)
    for key in required:
        if key not in values:
            raise ValueError(f"{where} has no {key!r}")
    for key, kind in schema.items():
        if key in values:
            check_kind(values[key], kind, f"{where}: {key}")
    return values


def field_kinds(cls):
    """{field name: kind} of a dataclass, from its annotations (fields of other types are left out)."""
    kinds = {}
    for f in fields(cls):
        kind = _kind_of(f.type)
        if kind is not None:
            kinds[f.name] = kind
    return kinds


def _kind_of(annotation):
    """The kind of an annotation (int, `float | None`, ...), or None when it is not one of ours."""
    if annotation in (int, float, str, bool):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = []
        for part in typing.get_args(annotation):
            kind = None if part is type(None) else _kind_of(part)
            if kind is None and part is not type(None):
                return None
            parts.append(kind)
        return tuple(parts)
    return None


def config_from_dict(cls, values, where=None):
    """cls(**values) for a config dataclass, naming any key it does not have and any value of the
    wrong kind. where (e.g. "config file 'my.json': model") starts every message; default cls's name."""
    where = where or cls.__name__
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a dict of settings, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    check_fields(values, field_kinds(cls), where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        message = str(error)
        if where == cls.__name__:
            raise ValueError(message) from None
        prefix = f"{cls.__name__}: "
        raise ValueError(f"{where}: {message[len(prefix):] if message.startswith(prefix) else message}") from None


# ---- command-line values: argparse types ----------------------------------------------------

class UsageError(ValueError):
    """Bad input from the command line: reported in one line, exit code 2."""


def max_threads():
    """The most threads minillm accepts: 4 x the machine's CPUs (more only slows down, and OpenMP
    fails to create tens of thousands of threads, or crashes)."""
    return 4 * (os.cpu_count() or 1)


def physical_memory():
    """Bytes of RAM in this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _flag_type(name, convert, check, expected):
    def parse(text):
        try:
            value = convert(text)
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


def integer(low=None, high=None, name="integer"):
    """An argparse type: an int in [low, high] (either bound may be None)."""
    bounds = " and ".join(b for b in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None
                                      else "") if b)
    return _flag_type(name, int, lambda v: (low is None or v >= low) and (high is None or v <= high),
                      f"an integer {bounds}".strip())


def number(low=None, high=None, low_open=False, high_open=False, name="number"):
    """An argparse type: a finite float in the interval from low to high (open ends: *_open)."""
    def inside(v):
        return (math.isfinite(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    if low is not None and high is not None:
        interval = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        interval = f" {'>' if low_open else '>='} {low:g}"
    else:
        interval = ""
    return _flag_type(name, float, inside, f"a finite number{interval}")


positive_int = integer(1, name="positive_int")
nonnegative_int = integer(0, name="nonnegative_int")
seed_int = integer(0, 2 ** 63 - 1, name="seed")
positive_float = number(0.0, low_open=True, name="positive_float")
nonnegative_float = number(0.0, name="nonnegative_float")
open_fraction = number(0.0, 1.0, low_open=True, high_open=True, name="open_fraction")     # (0, 1)
probability = number(0.0, 1.0, low_open=True, name="probability")                        # (0, 1]
dropout_rate = number(0.0, 1.0, high_open=True, name="dropout_rate")                     # [0, 1)
finite_float = number(name="finite_float")                                               # any finite number


def thread_count(text):
    """An argparse type: threads in [1, max_threads()]."""
    return integer(1, max_threads(), name="thread_count")(text)


def existing_file(text):
    """An argparse type: the path of an existing regular file (not a directory)."""
    if not text or not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular file")
    return text


def output_directory(text):
    """An argparse type: a directory to write into, which may not exist yet but is not a file."""
    if not text:
        raise argparse.ArgumentTypeError("must be a directory path, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


def nonempty_string(text):
    """An argparse type: a string that is not empty."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text
