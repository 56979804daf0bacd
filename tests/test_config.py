"""The config-file reader and config_from_dict (minillm.config): one-line errors that name the file
or the config class."""
import argparse
import os
import re
from dataclasses import dataclass

import pytest

from minillm.config import (check_fields, config_from_dict, dropout_rate, nonnegative_int, open_fraction,
                            positive_float, positive_int, probability, read_config)


def test_read_config_returns_the_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"n_layer": 2}}')
    assert read_config(path) == {"model": {"n_layer": 2}}


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    (b'{"model": ', "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object, not a list"),
    (b'{"a": "caf\xe9"}', r"is not UTF-8 \(bad byte at offset 10\)"),
])
def test_read_config_errors_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "my.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_config(path, "preset")
    assert str(error.value).startswith(f"preset file {str(path)!r}") and "\n" not in str(error.value)


@dataclass
class Small:
    a: int = 1
    b: str = "x"


def test_config_from_dict_builds_the_dataclass_and_names_unknown_keys():
    assert config_from_dict(Small, {"a": 3}) == Small(a=3)
    with pytest.raises(ValueError, match=r"Small: unknown keys \['c'\]; known keys are \['a', 'b'\]"):
        config_from_dict(Small, {"c": 1})
    with pytest.raises(ValueError, match="Small: expected a dict of settings, got list"):
        config_from_dict(Small, [1])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_config_never_opens_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")                      # opening it would wait for a writer forever
    for path in (tmp_path / "fifo.json", tmp_path):
        with pytest.raises(ValueError, match="is not a regular file"):
            read_config(path, "fit")


@dataclass
class Typed:
    n: int = 1
    x: float = 0.5
    name: str = "a"
    flag: bool = False
    size: int | None = None


@pytest.mark.parametrize("values,message", [
    ({"n": "3"}, "where: n must be an int, got str '3'"),
    ({"n": True}, "where: n must be an int, got bool True"),
    ({"n": 2.0}, "where: n must be an int, got float 2.0"),
    ({"x": float("nan")}, "where: x must be a finite number, got float nan"),
    ({"x": None}, "where: x must be a number, got null"),
    ({"name": ["a"]}, "where: name must be a string, got list"),
    ({"flag": 1}, "where: flag must be true or false, got int 1"),
    ({"size": "big"}, "where: size must be an int or null, got str 'big'"),
])
def test_config_from_dict_checks_each_fields_kind(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(Typed, values, "where")
    assert config_from_dict(Typed, {"n": 2, "x": 1, "size": None}) == Typed(n=2, x=1, size=None)


def test_check_fields_names_the_missing_and_the_wrong():
    assert check_fields({"a": 1}, {"a": int, "b": str}, "f") == {"a": 1}
    with pytest.raises(ValueError, match="f has no 'b'"):
        check_fields({"a": 1}, {}, "f", required=("b",))
    with pytest.raises(ValueError, match="f must be an object, got list"):
        check_fields([], {}, "f")


@pytest.mark.parametrize("parse,good,bad", [
    (positive_int, {"1": 1, "12": 12}, ["0", "-1", "1.5", "x", "", "nan"]),
    (nonnegative_int, {"0": 0}, ["-1", "1e3"]),
    (positive_float, {"1e-3": 1e-3}, ["0", "-1", "nan", "inf", "1e309"]),
    (open_fraction, {"0.5": 0.5}, ["0", "1", "nan"]),
    (probability, {"1": 1.0, "0.1": 0.1}, ["0", "1.01"]),
    (dropout_rate, {"0": 0.0, "0.9": 0.9}, ["1", "-0.1"]),
])
def test_the_flag_types_take_the_range_and_refuse_the_rest(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be .*, got {re.escape(repr(text))}"):
            parse(text)
