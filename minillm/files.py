"""Writing whole files atomically: a reader sees the old file or the new one, never half of one.

    write_atomically(path, lambda tmp: fig.savefig(tmp))   # any writer that takes a path
    atomic_write(path, "text")  /  atomic_write(path, b"bytes")
    write_json(path, {"a": 1})

The new content goes to a temporary file in the same directory (same file system, so the rename is
atomic), is flushed to disk (fsync), and is renamed over the target with os.replace; then the
directory itself is flushed so the rename survives a power cut. If writing fails, the temporary
file is removed and the target is left as it was. Every writer in minillm that writes a whole file
(checkpoints, tokenizers, token caches, plots, scaling fits) goes through here; logs that grow a
line at a time (train_log.jsonl, results.jsonl) are appended instead.
"""
import json
import os
import secrets


def _fsync_path(path, directory=False):
    try:
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    except OSError:                      # e.g. directories cannot be opened on Windows: skip
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path, write):
    """Call write(tmp) to write the whole new file at a temporary path, then move it to path.

    The temporary name keeps path's extension at its end (tools such as matplotlib pick the format
    from it). Returns path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}-{secrets.token_hex(4)}{os.path.splitext(path)[1]}"
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_path(directory, directory=True)
    return path


def atomic_write(path, data):
    """Write str (as UTF-8, with \\n line ends) or bytes to path atomically."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(data)
    elif isinstance(data, str):
        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(data)
    else:
        raise TypeError(f"atomic_write: data must be str or bytes, got {type(data).__name__}")
    return write_atomically(path, write)


def write_json(path, obj):
    """obj as indented JSON (non-ASCII characters kept as they are) plus a final newline, atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
