"""Small file helpers for io: safetensors memory-mapped (views, not copies), written atomically.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the tensor
bytes, offsets counted from the end of the header. Mapping the file and taking views at those
offsets gives every tensor without reading it; float32 tensors stay views, float16 and bfloat16
are widened to float32 (bfloat16 is the top half of a float32: shift it up 16 bits).
"""
import json
import os
import struct

import numpy as np

from ..files import write_atomically
from .errors import FormatError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
          "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_json(path, required=True):
    """A JSON file's value; a missing file is a FormatError when required (else None), as is bad JSON."""
    if not os.path.isfile(path):
        if required:
            raise FormatError(f"{path}: missing")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise FormatError(f"{path}: not readable JSON ({error})") from None


def read_safetensors(path):
    """{name: array} of a safetensors file, as views of a read-only memory map (see the docstring)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise FormatError(f"{path}: not a safetensors file (header length {n} for a file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as error:
            raise FormatError(f"{path}: damaged safetensors header ({error})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=0).view(np.ndarray)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor {name} has an unsupported or damaged entry {info!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        begin, end = 8 + n + int(begin), 8 + n + int(end)
        if end > size or end - begin != count * np.dtype(dtype).itemsize:
            raise FormatError(f"{path}: truncated or damaged safetensors file (tensor {name} does not fit)")
        array = data[begin:end].view(dtype).reshape(shape)
        tensors[name] = (array.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else array
    return tensors


def as_float32(array):
    """A float array as float32, a view when it already is."""
    if not np.issubdtype(array.dtype, np.floating):
        raise FormatError(f"a weight has dtype {array.dtype}, not a float type")
    return array if array.dtype == np.float32 else array.astype(np.float32)


def write_json(path, obj):
    """obj as indented UTF-8 JSON (non-ASCII kept as is, as Hugging Face writes its files), atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    write_atomically(path, write)


def write_safetensors(path, arrays, metadata=None):
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    write_atomically(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
