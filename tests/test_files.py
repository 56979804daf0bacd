"""Atomic whole-file writes (minillm.files): the target holds the old bytes or the new ones, never
a part, and a failed write leaves no temporary file behind."""
import json
import os

import pytest

from minillm.files import atomic_write, write_atomically, write_json


def test_atomic_write_writes_text_and_bytes_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "a.txt"
    assert atomic_write(path, "héllo\nworld\n") == str(path)
    assert path.read_bytes() == "héllo\nworld\n".encode("utf-8")
    atomic_write(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(TypeError, match="data must be str or bytes"):
        atomic_write(path, 3)


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_crash)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_the_temporary_file_is_beside_the_target_with_its_extension(tmp_path):
    """Writers such as matplotlib's savefig pick the format from the extension; the rename is only
    atomic within one file system, hence the same directory."""
    seen = []
    (tmp_path / "loss.png").write_text("old")

    def write(tmp):
        seen.append(tmp)
        assert (tmp_path / "loss.png").read_text() == "old"    # not written in place
        open(tmp, "w").write("png")

    write_atomically(tmp_path / "loss.png", write)
    assert seen[0] != str(tmp_path / "loss.png")
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0].endswith(".png")
    assert (tmp_path / "loss.png").read_text() == "png"


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"chars": "aé", "n": [1, 2]})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '"chars": "aé"' in text and json.loads(text) == {"chars": "aé", "n": [1, 2]}
