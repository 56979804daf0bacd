"""Shared timing harness for the benchmarks: ours and a baseline timed in the same process,
interleaved (ours, baseline, ours, baseline, ...), median of several repeats, and a JSON record
with the machine, the thread count, the shapes, the medians and the ratio.

Run nothing else while a benchmark runs: on 2 cores a second busy process makes OpenMP code
collapse and the figures mean nothing.
"""
import json
import os
import platform
import statistics
import sys
import time


def machine_info():
    import numpy as np

    import minillm
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
            "minillm": minillm.build_info(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(ours, baselines, repeats=7, warmup=1, min_time=0.05, settle=0.02):
    """Median seconds per call of ours and of each baseline, timed interleaved.

    ours: a function of no arguments; baselines: {name: function}. Each repeat runs every
    function once in turn (after `warmup` untimed rounds); a function that takes under min_time
    is called in a loop that long and the time divided by the number of calls. Before each
    timing the harness sleeps `settle` seconds: OpenBLAS, torch and our OpenMP each keep worker
    threads spinning for a moment after a call, and on 2 cores those steal the next one's time.
    """
    fns = {"ours": ours, **baselines}
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        once = time_once(fn)
        calls[name] = max(1, int(min_time / max(once, 1e-9)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = calls[name]
            time.sleep(settle)   # let the previous library's spinning worker threads go idle
            fn()                 # then wake this one's threads (an untimed call) before timing it
            samples[name].append(time_once(lambda: [fn() for _ in range(n)]) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def print_table(rows, columns):
    """rows: list of dicts; columns: list of (key, header, format)."""
    widths = [max(len(h), *(len(fmt.format(r[k])) if r.get(k) is not None else 1 for r in rows))
              for k, h, fmt in columns]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for r in rows:
        print("  ".join((fmt.format(r[k]) if r.get(k) is not None else "-").rjust(w)
                        for (k, _, fmt), w in zip(columns, widths)))


def write_json(path, payload):
    """Write the record atomically (minillm.files: a temp file beside the target, fsync, rename)."""
    from minillm.files import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
