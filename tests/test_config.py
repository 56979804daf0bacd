"""The config-file reader and config_from_dict (minillm.config): one-line errors that name the file
or the config class."""
from dataclasses import dataclass

import pytest

from minillm.config import config_from_dict, read_config


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
