"""Shared by the tests that look inside checkpoints: where the committed files are, editing a file
with its digest kept right (to reach the checks behind the digests), and today's layout turned
into the flat one minillm wrote before checkpoints were committed atomically."""
import hashlib
import json
import os
import shutil

from minillm import checkpoint as ckpt


def committed(out):
    """The directory of the committed checkpoint of a run directory (out/checkpoint-N)."""
    return ckpt.resolve_checkpoint(str(out))


def read(out, name, mode="rb"):
    with open(os.path.join(committed(out), name), mode) as f:
        return f.read()


def rewrite(out, name, content):
    """Replace a file of the committed checkpoint (bytes, or a JSON-able object) and its digest, so
    that what the loader checks after the digests sees the new content."""
    directory = committed(out)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
    state_path = os.path.join(directory, "state.json")
    state = json.load(open(state_path))
    if name != "state.json" and name in state.get("digests", {}):
        state["digests"][name] = hashlib.sha256(data).hexdigest()
        with open(state_path, "w") as f:
            json.dump(state, f)


def as_old_flat_layout(out):
    """Turn out/latest + out/checkpoint-N into the flat layout of older minillm: the files in out
    itself, and digests of the two safetensors files only."""
    directory = committed(out)
    for name in os.listdir(directory):
        shutil.move(os.path.join(directory, name), os.path.join(out, name))
    os.rmdir(directory)
    os.remove(os.path.join(out, "latest"))
    state_path = os.path.join(out, "state.json")
    state = json.load(open(state_path))
    state["digests"] = {k: v for k, v in state["digests"].items() if k.endswith(".safetensors")}
    with open(state_path, "w") as f:
        json.dump(state, f)
