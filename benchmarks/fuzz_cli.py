"""The command-line fuzzer (minillm/testing/fuzz.py) for longer than the test suite runs it.

    python benchmarks/fuzz_cli.py                       # 2000 cases, seed 0, 10 of them also in a subprocess
    python benchmarks/fuzz_cli.py --cases 10000 --seed 7 --subprocesses 50

Prints the verdicts by kind of case and every failure (a traceback, an internal error, a wrong
exit code, several error lines, a hang past --deadline seconds, a crash); exit code 1 if there was
one. The cases are generated from the seed, so a failure is reproduced by the same command.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minillm.testing import fuzz  # noqa: E402 (after the checkout is on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocesses", type=int, default=10, help="cases also run in a fresh process")
    parser.add_argument("--deadline", type=int, default=30, help="seconds a case may take before it is a hang")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minillm-fuzz-") as workdir:
        outcomes, seconds = fuzz.fuzz(args.cases, args.seed, workdir, args.subprocesses, args.deadline)
    print(fuzz.report(outcomes, seconds))
    return 1 if any(o.verdict not in fuzz.PASSING for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
