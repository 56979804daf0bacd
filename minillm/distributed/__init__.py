"""Data-parallel training on MPI: `mpiexec -n N minillm train ...`.

Every rank holds the whole model and trains on its shard of each global batch; gradients are
summed over the ranks in buckets, overlapped with the backward pass, before an optimizer step that
is the same on every rank (or, with --zero, split over them: ZeRO stage 1). Rank 0 alone writes
checkpoints, logs and the progress bar. See docs/distributed.md.

    comm.py           the communicator interface and its single-process version
    mpi.py            the MPI communicator (mpi4py; the optional `mpi` extra)
    watchdog.py       a deadline on every collective
    buckets.py        flat gradient buckets, summed while backward runs
    zero.py           AdamW with sharded moments
    data_parallel.py  what the Trainer asks of the ranks: batch shards, gradient sums, checkpoints
    faults.py         a failing rank stops every rank, with a message

Nothing here imports mpi4py until an MPI run asks for it, so single-process minillm never does.
"""
import os

from .comm import Communicator, LocalCommunicator, Request, RootFailed
from .data_parallel import DataParallel, ParallelConfig, merge_from_ranks, micro_batch_rows
from .faults import stop_all_on_error

# Set by MPI launchers in every process they start: MPICH / Intel MPI / Slurm's PMI (PMI_SIZE),
# Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH2 (MV2_COMM_WORLD_SIZE).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size():
    """The number of processes an MPI launcher says it started (1 when not under one)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def from_environment(force=False, timeout=600.0):
    """The communicator for this process: MPI when started by an MPI launcher with more than one
    process (or force=True), else LocalCommunicator. Only the MPI case imports mpi4py."""
    if not force and launched_size() <= 1:
        return LocalCommunicator()
    from .mpi import MPICommunicator
    comm = MPICommunicator(timeout)
    if comm.size == 1 and launched_size() > 1:
        raise RuntimeError(f"the MPI launcher started {launched_size()} processes but mpi4py's MPI sees only this "
                           "one: mpiexec and mpi4py come from different MPI installations (use the mpiexec of the "
                           "MPI mpi4py was built with, e.g. the one pip installed beside python)")
    return comm if comm.size > 1 else LocalCommunicator()


__all__ = ["Communicator", "LocalCommunicator", "Request", "RootFailed", "DataParallel", "ParallelConfig",
           "micro_batch_rows", "merge_from_ranks", "stop_all_on_error", "launched_size", "from_environment"]
