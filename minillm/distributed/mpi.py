"""The communicator on MPI: mpi4py collectives on NumPy buffers, each under a watchdog deadline.

Launched as `mpiexec -n N minillm train ...`; every rank runs the same command. Needs the `mpi`
extra (pip install 'minillm[mpi]': mpi4py and MPICH from PyPI). Buffers are C-contiguous NumPy
arrays and mpi4py maps their dtype to the MPI type; every reduction is a sum.
"""
import sys
import time

import numpy as np

from .comm import Communicator, Request, _pieces
from .watchdog import Watchdog


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError(f"distributed training needs mpi4py ({error}): pip install 'minillm[mpi]'") from None
    return MPI


class MPIRequest(Request):
    def __init__(self, request, comm, what):
        self.request, self.comm, self.what = request, comm, what

    def test(self):
        return self.request.Test()

    def wait(self):
        with self.comm.watchdog.guard(self.what):
            self.request.Wait()


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD. timeout: seconds a rank may wait in one collective before every rank is
    aborted with a message naming the collective and the step (None: wait forever)."""

    def __init__(self, timeout=600.0):
        self.MPI = MPI = import_mpi()
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.context = "start-up"
        self.watchdog = Watchdog(timeout, self._on_timeout)

    def set_context(self, text):
        self.context = text

    def _on_timeout(self, what, waited):
        self.abort(3, f"minillm: error: rank {self.rank} of {self.size} waited {waited:.0f} s for the other ranks in "
                      f"{what} ({self.context}): a rank died or hangs; stopping every rank (checkpoints already "
                      f"written are complete; resume from the last one)")

    def allreduce(self, buf):
        with self.watchdog.guard("allreduce"):
            self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def iallreduce(self, buf):
        return MPIRequest(self.world.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), self, "allreduce")

    def ireduce_scatter(self, send, recv, counts):
        return MPIRequest(self.world.Ireduce_scatter(send, recv, list(counts), op=self.MPI.SUM), self,
                          "reduce-scatter")

    def allgatherv(self, buf, counts):
        displs = [start for start, _ in _pieces(counts)]
        with self.watchdog.guard("allgather"):
            self.world.Allgatherv(self.MPI.IN_PLACE, [buf, (list(counts), displs)])

    def gatherv(self, send, recv, counts):
        displs = [start for start, _ in _pieces(counts)]
        spec = [recv, (list(counts), displs)] if self.rank == 0 else None
        with self.watchdog.guard("gather"):
            self.world.Gatherv(np.ascontiguousarray(send), spec, root=0)

    def bcast(self, buf):
        with self.watchdog.guard("broadcast"):
            self.world.Bcast(buf, root=0)

    def bcast_object(self, obj):
        with self.watchdog.guard("broadcast"):
            return self.world.bcast(obj, root=0)

    def allgather_object(self, obj):
        with self.watchdog.guard("allgather"):
            return self.world.allgather(obj)

    def barrier(self):
        with self.watchdog.guard("barrier"):
            self.world.Barrier()

    def abort(self, code, message):
        """Print message and end every rank now (MPI_Abort); never returns. The pause lets the
        launcher forward the line before the abort tears the job down (it can be lost otherwise)."""
        print(message, file=sys.stderr, flush=True)
        time.sleep(0.5)
        self.world.Abort(code)
