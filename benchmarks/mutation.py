"""Mutation testing (mutmut 3) of the parts whose tests must pin behaviour to its definition.

For each target, a scratch copy of the repository at --ref (git archive, so uncommitted edits
are not in it) gets a [mutmut] section in its setup.cfg naming the files to mutate and the test
files that guard them, and `mutmut run` mutates one function at a time and runs the tests
that call it. A mutant that no test kills "survived". The repository itself is never touched:
no mutmut configuration in it, no mutants/ folder.

    python benchmarks/mutation.py                          # every target at HEAD
    python benchmarks/mutation.py --targets generate moe   # some of them
    python benchmarks/mutation.py --ref <commit>           # the suite of another commit

Prints killed/survived per target and writes benchmarks/results/mutation-<ref>.json with the
counts and every survivor's diff. Needs `pip install mutmut` (3.x). The native extension is
built once in the scratch copy (or reused from the working tree when csrc/ and setup.py equal
--ref's), since mutmut runs the tests on the copy.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (files to mutate, test files that guard them, environment, sample)
# sample: None runs every mutant; else fnmatch patterns of the mutants to run. "*0", "*5": the
# mutants whose number ends in 0 or 5, a fixed fifth of every function's mutants, for the targets
# whose full run takes hours on 2 busy cores (their tests train tokenizers / run gradchecks).
FIFTH = ["*__mutmut_*0", "*__mutmut_*5"]
TARGETS = {
    "kernels-reference": (["minillm/kernels/reference/*"], ["tests/test_kernels_*.py", "tests/test_functional_*.py"],
                          {"MINILLM_BACKEND": "numpy"}, FIFTH),
    "generate": (["minillm/generate.py"], ["tests/test_generate.py"], {}, None),
    "optim": (["minillm/optim.py"], ["tests/test_optim.py", "tests/test_train.py"], {}, None),
    "moe": (["minillm/nn/moe.py"], ["tests/test_nn_moe.py"], {}, None),
    "tokenizers": (["minillm/tokenizers/*"], ["tests/test_tokenizers_*.py"], {}, FIFTH),
}
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "segfault", "skipped", "caught by type check")


def run(cmd, cwd, env=None, log=None):
    with open(log, "a") if log else open(os.devnull, "w") as out:
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def scratch_copy(ref, into):
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    same_native = subprocess.run(["git", "diff", "--quiet", ref, "--", "csrc", "setup.py"], cwd=ROOT).returncode == 0
    built = glob.glob(os.path.join(ROOT, "minillm", "_C*.so"))
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True) + [os.path.join(ROOT, "setup.py")]
    fresh = built and os.path.getmtime(built[0]) >= max(os.path.getmtime(f) for f in sources)   # built after csrc/ changed
    if same_native and fresh:
        shutil.copy2(built[0], os.path.join(into, "minillm"))
    else:
        run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], into)
    # the GPT-2 rank file tests read MINILLM_DATA_DIR, which the scratch copy's runs inherit


def mutmut_section(mutate, tests, into):
    test_files = sorted({os.path.relpath(p, into) for pattern in tests for p in glob.glob(os.path.join(into, pattern))})
    lines = ["[mutmut]", "source_paths=minillm", "only_mutate=" + "\n    ".join(mutate),
             "pytest_add_cli_args=-p no:cacheprovider -q",
             "pytest_add_cli_args_test_selection=" + "\n    ".join(test_files)]
    with open(os.path.join(into, "setup.cfg"), "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    return test_files


def statuses(into, env):
    """{mutant name: status} of the mutants that were run."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=into, env=env, capture_output=True,
                         text=True).stdout
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    return {name: status for name, status in pairs if status != "not checked"}


def survivors(into, env, names):
    diffs = {}
    for name in names:
        shown = subprocess.run(["mutmut", "show", name], cwd=into, env=env, capture_output=True, text=True).stdout
        diffs[name] = "\n".join(line for line in shown.splitlines() if line.startswith(("-", "+"))
                                and not line.startswith(("---", "+++")))
    return diffs


def mutate_target(name, ref, max_children, keep):
    mutate, tests, extra_env, sample = TARGETS[name]
    into = tempfile.mkdtemp(prefix=f"minillm-mutation-{name}-")
    scratch_copy(ref, into)
    test_files = mutmut_section(mutate, tests, into)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    code = run(["mutmut", "run", "--max-children", str(max_children), *(sample or [])], into, env,
               os.path.join(into, "run.log"))
    seconds = time.perf_counter() - start
    status = statuses(into, env)
    if code != 0 or not status:
        raise SystemExit(f"mutation.py: mutmut failed on {name} (exit {code}); see {into}/run.log")
    stats = {s: sum(v == s for v in status.values()) for s in STATUSES}
    stats["run"] = len(status)
    result = {"mutate": mutate, "tests": test_files, "env": extra_env, "sample": sample, "seconds": round(seconds),
              "stats": stats, "survivors": survivors(into, env, [n for n, v in status.items() if v == "survived"])}
    if keep:
        result["scratch"] = into
    else:
        shutil.rmtree(into, ignore_errors=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    parser.add_argument("--ref", default="HEAD", help="the commit whose code and tests are mutated (default HEAD)")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (to run `mutmut show` there)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/mutation-<ref>.json)")
    args = parser.parse_args(argv)
    if shutil.which("mutmut") is None:
        raise SystemExit("mutation.py: mutmut is not installed; pip install 'mutmut>=3'")
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    results = {}
    print(f"{'target':<18} {'run':>6} {'killed':>7} {'survived':>9} {'timeout':>8} {'no tests':>9} {'seconds':>8}")
    for name in args.targets:
        r = results[name] = mutate_target(name, commit, args.max_children, args.keep)
        s = r["stats"]
        print(f"{name:<18} {s['run']:>6} {s['killed']:>7} {s['survived']:>9} {s['timeout']:>8} {s['no tests']:>9} "
              f"{r['seconds']:>8}{'  (sampled)' if r['sample'] else ''}", flush=True)
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"mutation-{commit}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump({"ref": commit, "mutmut": subprocess.run(["mutmut", "--version"], capture_output=True,
                                                           text=True).stdout.strip(), "targets": results}, f, indent=1)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
