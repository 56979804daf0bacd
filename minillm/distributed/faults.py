"""Failures of one rank, made to stop every rank with a clear message instead of a hang.

Three ways a rank can fail while the others wait for it in a collective:
  - it raises (a bug, a full disk, bad data only it reads): stop_all_on_error prints the error
    with the rank and aborts every rank (MPI_Abort); without that, the others would wait forever;
  - it dies (killed, out of memory, os._exit): the MPI launcher sees it go and kills the others
    within about a second (mpiexec's default clean-up), printing which process ended how;
  - it hangs (a stuck file system, a lost node): the communicator's watchdog (watchdog.py) aborts
    every rank once one has waited --comm-timeout seconds in one collective.
Checkpoints are written by rank 0 alone, as one atomic commit (minillm/checkpoint.py), so a run
stopped by any of these, at any instant, leaves the last checkpoint or the new one, whole.

MINILLM_FAULT injects each case for tests, on one rank at the start of one step:
"raise:<rank>:<step>" raises a RuntimeError; "exit:<rank>:<step>" makes the rank vanish (os._exit,
no clean-up, like a crash); "hang:<rank>:<step>" makes it stop answering (it sleeps), like a stuck node.
"""
import os
import sys
import time


FAULTS = ("raise", "exit", "hang")


def parse_fault(spec):
    """MINILLM_FAULT's value -> (kind, rank, step)."""
    try:
        kind, rank, step = spec.split(":")
        if kind in FAULTS:
            return kind, int(rank), int(step)
    except ValueError:
        pass
    raise ValueError(f"MINILLM_FAULT must be <raise|exit|hang>:<rank>:<step>, got {spec!r}")


def inject_fault(spec, rank, step):
    kind, fault_rank, fault_step = parse_fault(spec)
    if rank != fault_rank or step != fault_step:
        return
    print(f"minillm: MINILLM_FAULT: rank {rank} {kind}s at step {step}", file=sys.stderr, flush=True)
    if kind == "raise":
        raise RuntimeError(f"MINILLM_FAULT: injected error on rank {rank} at step {step}")
    if kind == "exit":
        os._exit(17)
    while True:
        time.sleep(60)


def stop_all_on_error(comm, fn, passes=()):
    """fn() on this rank. An exception of a type in `passes` (errors every rank raises together,
    such as a diverged loss) propagates; any other one prints a line naming the rank and aborts
    every rank, with exit code 2 for bad input (ValueError) and 1 otherwise."""
    if comm.size == 1:
        return fn()
    try:
        return fn()
    except passes:
        raise
    except Exception as error:
        comm.abort(2 if isinstance(error, ValueError) else 1,
                   f"minillm: error on rank {comm.rank} of {comm.size}: {type(error).__name__}: {error}")
