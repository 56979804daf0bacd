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

DirectoryLock makes one process at a time the writer of a directory (a training run's --out).
"""
import errno
import json
import os
import secrets
import socket
import threading
import time


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


def fsync_file(path):
    """Flush a file's content to disk."""
    _fsync_path(path)


def fsync_directory(directory):
    """Flush a directory's entries (renames, new files) to disk; a no-op where that is impossible."""
    _fsync_path(directory, directory=True)


# ---- one writer per directory ---------------------------------------------------------------

LOCK_NAME = ".minillm.lock"


class DirectoryBusy(RuntimeError):
    """Another process holds the lock on a directory minillm writes into."""


try:                                       # POSIX: flock; Windows: msvcrt's byte-range lock
    import fcntl
except ImportError:                        # pragma: no cover (Windows)
    fcntl = None
    try:
        import msvcrt
    except ImportError:
        msvcrt = None

_held = {}                                 # real path of the directory -> [fd, count]: locks this process holds
_held_guard = threading.Lock()


def _try_lock(fd):
    """Take the exclusive lock on fd without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:           # pragma: no cover (Windows)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError as error:               # e.g. a file system without locks: go on unlocked
        return error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _unlock(fd):
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:           # pragma: no cover (Windows)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


class DirectoryLock:
    """An exclusive lock on a directory, held by one process at a time:

        with DirectoryLock("out/run"):      # DirectoryBusy if another process holds it
            ...write into out/run...

    The lock is an flock on DIR/.minillm.lock (created, with the directory, if needed; the file
    stays, empty of meaning but for the pid and host of the last holder). The operating system
    drops it when the process ends however it ends, so a killed run leaves no stale lock. Taking it
    again in the process that holds it only counts up (it is re-entrant), so a command line that
    locks its output and the Trainer that locks it again do not collide. timeout: seconds to keep
    trying before giving up (a reader may hold it for a moment while it cleans stale files).
    """

    def __init__(self, directory, timeout=0.5):
        self.directory, self.timeout = os.fspath(directory), timeout
        self._key = None

    def acquire(self):
        os.makedirs(self.directory, exist_ok=True)
        key = os.path.realpath(self.directory)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return self
        path = os.path.join(self.directory, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise DirectoryBusy(f"{self.directory!r} is in use by another minillm process{holder}; wait for it "
                                    "to finish or choose another directory")
            time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass
        with _held_guard:
            _held[key] = [fd, 1]
        self._key = key
        return self

    def release(self):
        if self._key is None:
            return
        with _held_guard:
            entry = _held.get(self._key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[self._key]
                    _unlock(entry[0])
                    os.close(entry[0])
        self._key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def held_here(directory):
    """Whether this process holds the lock on directory."""
    with _held_guard:
        return os.path.realpath(directory) in _held


def try_lock(directory):
    """A DirectoryLock on directory if no process (this one included) holds it now, else None.
    Never creates the directory; None too when the lock file cannot be made (a read-only place)."""
    if not os.path.isdir(directory) or held_here(directory):
        return None
    try:
        return DirectoryLock(directory, timeout=0.0).acquire()
    except (DirectoryBusy, OSError):
        return None


def _read_holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() if hasattr(os, "pread") else ""
    except OSError:
        text = ""
    return f" ({text})" if text else ""
