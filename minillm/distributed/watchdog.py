"""A deadline on every collective, so a rank that hangs cannot stall the others forever.

MPI has no timeout: a collective waits until every rank has joined it. When a rank dies, the MPI
launcher (mpiexec) usually kills the rest within a second, but a rank that hangs (a stuck file
system, a deadlock, a lost node under `mpiexec -disable-auto-cleanup`) leaves the others waiting,
each spinning on a core. The watchdog is a daemon thread that wakes up now and then; if the main
thread has been inside one collective for longer than `timeout` seconds it calls on_timeout (which
prints one line and aborts every rank). mpi4py releases the GIL inside MPI calls, so the thread
runs while the main thread waits in one.
"""
import threading
import time
from contextlib import contextmanager


class Watchdog:
    def __init__(self, timeout, on_timeout):
        """timeout: seconds (None or <= 0: no deadline); on_timeout(what, waited_seconds) -> never returns."""
        self.timeout = timeout if timeout and timeout > 0 else None
        self.on_timeout = on_timeout
        self._entered = None            # (what, time.monotonic() at entry) while in a collective
        self._thread = None

    @contextmanager
    def guard(self, what):
        """Around one blocking collective; nested guards keep the outer (earlier) deadline."""
        if self.timeout is None or self._entered is not None:
            yield
            return
        self._start()
        self._entered = (what, time.monotonic())
        try:
            yield
        finally:
            self._entered = None

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="minillm-watchdog", daemon=True)
            self._thread.start()

    def _watch(self):
        poll = min(1.0, self.timeout / 10)
        while True:
            time.sleep(poll)
            entered = self._entered
            if entered is not None and time.monotonic() - entered[1] > self.timeout:
                self.on_timeout(entered[0], time.monotonic() - entered[1])
                return
