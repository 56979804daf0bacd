"""Data-parallel training on MPI: time per step and time in the gradient all-reduce, for 1 and 2
ranks with 1 thread each, at the shakespeare-char and llama-15m sizes (their preset batches, so
2 ranks share the same global batch: strong scaling).

    python benchmarks/distributed.py             # needs mpi4py + mpiexec (pip install 'minillm[mpi]')
    python benchmarks/distributed.py --quick     # 2 timed steps, shakespeare-char only

Each configuration runs the real Trainer.train_step under `mpiexec -n N` in a fresh job:
    1 rank                       the single-process loop (no communicator)
    2 ranks, overlap             bucket all-reduces started during backward (the default)
    2 ranks, no overlap          one all-reduce of the whole gradient after backward
    2 ranks, ZeRO-1              reduce-scatter, sharded AdamW, all-gather of the parameters
and reports, as medians over the timed steps (after 2 warm-up steps):
    step_s       wall time of a step (rank 0)
    exposed_s    time the step spends waiting for gradient sums after backward (finish()), plus
                 the ZeRO parameter all-gather: the communication the overlap did not hide
    opt_s        the optimizer step's own compute (AdamW; with ZeRO on 1/N of the parameters)
    allreduce_s  a bare all-reduce of a gradient-sized float32 buffer (no training running), and
    bus_gb_s     its bus bandwidth, 2 (N - 1) / N * bytes / allreduce_s
    peak_mib     peak resident memory of rank 0; opt_mib: optimizer state rank 0 holds
Tokens come from the built-in corpus with a char tokenizer (llama-15m keeps its 32000-token
vocabulary: the embedding and its gradient are full size). Writes benchmarks/results/distributed.json.
Run nothing else meanwhile: 2 ranks on 2 cores use the whole machine.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from harness import machine_info, print_table, write_json  # noqa: E402

CASES = {"shakespeare-char": 65, "llama-15m": 32000}          # preset: vocab size
MODES = {"single": (1, []), "overlap": (2, []), "no-overlap": (2, ["no-overlap"]), "zero": (2, ["zero"])}


def worker(case, vocab, steps, flags):
    """One rank: a Trainer on the preset, timed step by step; rank 0 prints a JSON line."""
    import numpy as np

    from minillm import distributed
    from minillm.models import ModelConfig, load_preset
    from minillm.train import TrainConfig, Trainer, peak_memory_mib
    comm = distributed.from_environment()
    preset = load_preset(case)
    model = ModelConfig.from_dict(preset["model"] | {"vocab_size": vocab})
    train = TrainConfig.from_dict(preset["train"] | {"tokenizer": "char", "max_iters": steps + 2, "eval_iters": 0})
    parallel = distributed.ParallelConfig(zero="zero" in flags, overlap="no-overlap" not in flags)
    out = tempfile.mkdtemp(prefix="minillm-dist-") if comm.rank == 0 else None
    out = comm.bcast_object(out)
    trainer = Trainer(model, train, out, progress=False, log=lambda msg: None, comm=comm, parallel=parallel)
    spent = {"finish": 0.0, "allgather": 0.0, "optimizer": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return result
        return wrapper

    trainer.optimizer.step = timed(trainer.optimizer.step, "optimizer")
    if trainer.dp.sync is not None:
        trainer.dp.sync.finish = timed(trainer.dp.sync.finish, "finish")
        if parallel.zero:
            comm.allgatherv = timed(comm.allgatherv, "allgather")
    step_s, exposed_s, opt_s = [], [], []
    for i in range(steps + 2):
        spent.update(finish=0.0, allgather=0.0, optimizer=0.0)
        comm.barrier()
        start = time.perf_counter()
        trainer.train_step()
        if i >= 2:
            step_s.append(time.perf_counter() - start)
            exposed_s.append(spent["finish"] + spent["allgather"])
            opt_s.append(spent["optimizer"] - spent["allgather"])
    n = trainer.model.num_parameters()
    allreduce_s = None
    if comm.size > 1:
        buf = np.zeros(n, np.float32)
        times = []
        for _ in range(7):
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce(buf)
            times.append(time.perf_counter() - start)
        allreduce_s = statistics.median(times[1:])
    if comm.rank == 0:
        tokens = train.batch_size * train.grad_accum * model.block_size
        print(json.dumps({"params": n, "tokens": tokens, "step_s": statistics.median(step_s),
                          "exposed_s": statistics.median(exposed_s), "opt_s": statistics.median(opt_s),
                          "allreduce_s": allreduce_s,
                          "peak_mib": peak_memory_mib(), "opt_mib": trainer.dp.optimizer_state_bytes() / 2 ** 20}))
        shutil.rmtree(out, ignore_errors=True)


def run(case, mode, steps):
    ranks, flags = MODES[mode]
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    command = [sys.executable, __file__, "--worker", case, str(steps), *flags]
    if mode != "single":
        command = [mpiexec, "-n", str(ranks)] + command
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row.update(model=case, mode=mode, ranks=ranks, tok_s=row["tokens"] / row["step_s"])
    if row["allreduce_s"]:
        row["bus_gb_s"] = 2 * (ranks - 1) / ranks * 4 * row["params"] / row["allreduce_s"] / 1e9
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, steps, *flags = args.worker
        return worker(case, CASES[case], int(steps), flags)
    if shutil.which("mpiexec", path=os.path.dirname(sys.executable)) is None and shutil.which("mpiexec") is None:
        raise SystemExit("needs mpiexec: pip install 'minillm[mpi]'")
    steps = 2 if args.quick else args.steps
    rows = []
    for case in (["shakespeare-char"] if args.quick else CASES):
        for mode in MODES:
            rows.append(run(case, mode, steps))
            single = rows[-1]["step_s"] if mode == "single" else single
            rows[-1]["speedup"] = single / rows[-1]["step_s"]
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; 1 thread per rank; median of {steps} steps\n")
    print_table(rows, [("model", "model", "{}"), ("mode", "mode", "{}"), ("ranks", "ranks", "{}"),
                       ("step_s", "step s", "{:.4f}"), ("tok_s", "tok/s", "{:,.0f}"), ("speedup", "speedup", "{:.2f}"),
                       ("exposed_s", "exposed comm s", "{:.4f}"), ("opt_s", "optimizer s", "{:.4f}"),
                       ("allreduce_s", "all-reduce s", "{:.4f}"),
                       ("bus_gb_s", "bus GB/s", "{:.2f}"), ("peak_mib", "peak MiB", "{:.0f}"),
                       ("opt_mib", "opt MiB", "{:.1f}")])
    write_json(args.out, {"machine": info, "threads_per_rank": 1, "steps": steps, "results": rows})


if __name__ == "__main__":
    main()
