"""The communicator interface data-parallel training talks to, and its single-process version.

A communicator is one process's view of a group of `size` processes (ranks 0 .. size-1) that run
the same program. Data-parallel training needs only a handful of collectives, all on NumPy buffers
and all summing (the one reduction gradients need):

    allreduce(buf)                     buf <- sum over ranks of buf, on every rank (in place)
    iallreduce(buf) -> Request         the same, started now and finished by request.wait()
    ireduce_scatter(send, recv, counts)  rank r gets the sum over ranks of its own piece of send
                                       (pieces of counts[0], counts[1], ... elements, in rank order)
    allgatherv(buf, counts)            each rank contributes its piece of buf in place; all get all
    gatherv(send, recv, counts)        rank 0 gets every rank's piece, in rank order
    bcast(buf) / bcast_object(obj)     rank 0's array / picklable object, on every rank
    allgather_object(obj)              the list of every rank's object, on every rank
    barrier(), abort(code, message)

LocalCommunicator (size 1) makes every collective a copy or nothing, so minillm trains and its
tests run without MPI; MPICommunicator (minillm/distributed/mpi.py) runs them on mpi4py.
`run_on_root` and `root_first` are the two patterns for work only rank 0 should do.
"""
import sys

import numpy as np


class Request:
    """A collective in flight: test() drives it and says whether it is done; wait() finishes it."""

    def test(self):
        return True

    def wait(self):
        pass


class Communicator:
    rank = 0
    size = 1

    def allreduce(self, buf):
        raise NotImplementedError

    def iallreduce(self, buf):
        raise NotImplementedError

    def ireduce_scatter(self, send, recv, counts):
        raise NotImplementedError

    def allgatherv(self, buf, counts):
        raise NotImplementedError

    def gatherv(self, send, recv, counts):
        raise NotImplementedError

    def bcast(self, buf):
        raise NotImplementedError

    def bcast_object(self, obj):
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def abort(self, code, message):
        raise NotImplementedError

    def set_context(self, text):
        """What the program is doing (e.g. "step 12"), named in a timeout message."""

    # ----- rank-0 work, with its result or its error on every rank
    def run_on_root(self, fn):
        """fn() on rank 0 only; its result on every rank (it must pickle).

        If fn raises, rank 0 re-raises that error and every other rank raises RootFailed, which
        carries nothing to print: all ranks stop together and only rank 0 reports the problem.
        """
        if self.size == 1:
            return fn()
        if self.rank == 0:
            try:
                result = fn()
            except Exception:
                self.bcast_object(("error", None))
                raise
            self.bcast_object(("ok", result))
            return result
        status, result = self.bcast_object(None)
        if status == "error":
            raise RootFailed()
        return result

    def root_first(self, fn):
        """fn() on rank 0, then on the other ranks: for work whose first call writes a file (a
        token cache) that later calls read. Returns fn()'s result on every rank."""
        if self.size == 1:
            return fn()
        on_root = []
        self.run_on_root(lambda: on_root.append(fn()))       # broadcasts None: only that fn succeeded
        return on_root[0] if self.rank == 0 else fn()


class RootFailed(Exception):
    """Rank 0 failed in work it did for every rank (see run_on_root); rank 0 reports why."""


def _pieces(counts):
    """(start, stop) of each rank's piece of a buffer cut into pieces of counts[r] elements."""
    ends = np.cumsum(counts)
    return [(int(e - c), int(e)) for c, e in zip(counts, ends)]


class LocalCommunicator(Communicator):
    """One process alone: sums over one rank are the buffer itself."""

    rank, size = 0, 1

    def allreduce(self, buf):
        pass

    def iallreduce(self, buf):
        return Request()

    def ireduce_scatter(self, send, recv, counts):
        recv[...] = send[:counts[0]]
        return Request()

    def allgatherv(self, buf, counts):
        pass

    def gatherv(self, send, recv, counts):
        recv[:counts[0]] = send

    def bcast(self, buf):
        pass

    def bcast_object(self, obj):
        return obj

    def allgather_object(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code, message):
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(code)
