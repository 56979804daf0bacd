"""A bounded fuzzer for the command line and the file loaders: generated bad input, and a check
that minillm answers each with an exit code and at most one line, never a traceback or a hang.

    outcomes = run(cases(300, seed=0, workdir=tmp))     # [Outcome(kind, argv, verdict, detail), ...]
    print(report(outcomes))                             # counts by kind and verdict

A case is one of four kinds, drawn by a seeded generator (the same seed, the same cases):
  flag        a command with one flag given a value from a pool of edge and nonsense values
  config      a --config file with one field (anywhere in it) replaced by another kind, or removed
  checkpoint  a trained checkpoint, copied and damaged one way: a JSON field replaced or removed
              (the digest kept right or not), bytes flipped, cut or appended, a header that lies,
              a file swapped for a directory, a link to /dev/zero, a FIFO or nothing; the pointer
              rewritten; then generate, eval or train --resume on it
  tokenizer   a saved tokenizer damaged the same way, then `minillm tokenizer encode` with it
Each runs in this process (minillm.cli.main, output captured, a deadline set by SIGALRM); a few
run in a subprocess too, to catch what only a crash shows. Verdicts: "ok" (exit 0), "refused"
(exit 2, one error line), "diverged" (exit 1, the training stopped with its message); anything
else is a failure: "traceback", "internal error", "bad exit", "several error lines", "hang",
"crash".
"""
import base64
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

PASSING = ("ok", "refused", "diverged")
TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40
TINY = {"model": {"vocab_size": None, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8},
        "train": {"batch_size": 2, "max_iters": 2, "eval_interval": 2, "eval_iters": 1, "warmup_iters": 1,
                  "lr_decay_iters": 2, "sample_tokens": 0}}
NUMBERS = ["0", "-1", "1", "2", "nan", "inf", "-inf", "", "abc", "1e309", "1.5", "-0", "0x10", " 3", "2.0", "1_0"]
HUGE = ["1e30", "1e-30", "4294967297", str(2 ** 63), "9" * 30]
STRINGS = ["", " ", "to", "\ud800", "<|endoftext|>", "é中🙂", "\n\n", "x" * 3000, "\x7f", "[UNK]"]
PATTERNS = ["gpt2", "cl100k", "[", r"\w+", r"(a)|.", r"\S+|\s+", "(?", ".", r"\s*", ""]
UP = os.path.join("..", "..", "x")     # a path out of the directory that holds it
VALUES = [None, "x", "", [], {}, -1, 0, 1, 10 ** 12, 1.5, True, float("nan"), float("inf"), UP, "/dev/zero",
          [1, 2], {"a": 1}, "checkpoint-1"]


@dataclass
class Case:
    kind: str
    argv: list
    subprocess: bool = False
    env: dict = field(default_factory=dict)


@dataclass
class Outcome:
    kind: str
    argv: list
    verdict: str
    detail: str


# ---- the material: a corpus, a config, a trained run, saved tokenizers ---------------------

def prepare(workdir):
    """Write the files the cases start from into workdir (once); returns the paths."""
    from ..cli import main
    from ..tokenizers import KINDS
    paths = {k: os.path.join(workdir, v) for k, v in (("data", "corpus.txt"), ("config", "tiny.json"),
                                                       ("run", "run"), ("file", "a_file"), ("dir", "a_dir"))}
    with open(paths["data"], "w") as f:
        f.write(TEXT)
    with open(paths["config"], "w") as f:
        json.dump(TINY, f)
    with open(paths["file"], "w") as f:
        f.write("just a file")
    os.makedirs(paths["dir"], exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", "--config", paths["config"], "--data", paths["data"], "--out", paths["run"],
                     "--no-progress"])
    if code != 0:
        raise RuntimeError("fuzz: could not train the checkpoint the cases damage")
    for kind in ("bpe", "unigram", "wordpiece", "char"):
        paths[f"tok-{kind}"] = os.path.join(workdir, f"tok-{kind}")
        KINDS[kind].train(TEXT, 300 if kind != "unigram" else 400).save(paths[f"tok-{kind}"])
    paths["tiktoken"] = os.path.join(workdir, "ranks.tiktoken")
    with open(paths["tiktoken"], "wb") as f:
        f.write(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256)))
    if hasattr(os, "mkfifo"):
        paths["fifo"] = os.path.join(workdir, "a_fifo")
        os.mkfifo(paths["fifo"])
    return paths


def _fresh(workdir, rng, stem):
    return os.path.join(workdir, f"{stem}-{rng.randrange(10 ** 9)}")


# ---- flag cases -------------------------------------------------------------------------------

def _flag_case(rng, paths, workdir):
    path_pool = [paths["file"], paths["dir"], os.path.join(workdir, "missing"), "", paths.get("fifo", paths["file"]),
                 paths["data"], paths["run"], "/dev/null"]
    commands = {
        "train": (["train", "--config", paths["config"], "--data", paths["data"], "--out", _fresh(workdir, rng, "out"),
                   "--no-progress", "--max-iters", "1"],
                  {"--max-iters": NUMBERS, "--batch-size": NUMBERS, "--lr": NUMBERS + HUGE, "--seed": NUMBERS + HUGE,
                   "--eval-interval": NUMBERS, "--eval-iters": NUMBERS, "--grad-accum": NUMBERS,
                   "--dropout": NUMBERS + HUGE, "--sample-tokens": NUMBERS, "--threads": NUMBERS + HUGE,
                   "--lr-decay-iters": NUMBERS + HUGE, "--tokenizer-vocab-size": NUMBERS,
                   "--aux-loss-coef": NUMBERS + HUGE, "--bucket-mb": NUMBERS + HUGE, "--comm-timeout": NUMBERS,
                   "--tokenizer": ["char", "bpe", "sentencepiece", ""] + path_pool, "--config": path_pool,
                   "--data": path_pool, "--out": path_pool, "--preset": ["llama-15m", "nope"],
                   "--resume": None, "--overwrite": None}),
        "generate": (["generate", "--ckpt", paths["run"], "--prompt", "to", "--max-new-tokens", "3", "--no-stream"],
                     {"--max-new-tokens": NUMBERS, "--temperature": NUMBERS + HUGE, "--top-k": NUMBERS + HUGE,
                      "--top-p": NUMBERS + HUGE, "--seed": NUMBERS + HUGE, "--num-samples": NUMBERS,
                      "--prompt": STRINGS, "--stop": STRINGS, "--threads": NUMBERS + HUGE, "--ckpt": path_pool,
                      "--no-cache": None}),
        "eval": (["eval", "--ckpt", paths["run"], "--data", paths["data"], "--no-progress"],
                 {"--val-fraction": NUMBERS + HUGE, "--batch-size": NUMBERS + HUGE, "--split": ["val", "all", "x"],
                  "--data": path_pool, "--ckpt": path_pool, "--threads": NUMBERS}),
        "embed": (["embed", "--model", paths["run"], "--text", "to be"],       # a decoder: refused unless --model
                  {"--text": STRINGS, "--input": path_pool, "--batch-size": NUMBERS + HUGE, "--max-length": NUMBERS,
                   "--pooling": ["cls", "max", "x"], "--threads": NUMBERS, "--model": path_pool + ["nope"],
                   "--similarity": None}),
        "quantize": (["quantize", "--ckpt", paths["run"], "--scheme", "q8_0", "--out", _fresh(workdir, rng, "q"),
                      "--no-progress"],
                     {"--scheme": ["q4_0", "int8", "q3", ""], "--out": path_pool, "--ckpt": path_pool}),
        "tokenizer-encode": (["tokenizer", "encode", "--tokenizer", paths["tok-bpe"], "--text", "to be"],
                             {"--text": STRINGS, "--tokenizer": path_pool + [paths["tiktoken"], paths["tok-unigram"],
                                                                             paths["tok-wordpiece"]],
                              "--input": path_pool, "--format": ["ids", "json", "tokens", "x"]}),
        "tokenizer-decode": (["tokenizer", "decode", "--tokenizer", paths["tok-bpe"], "--ids", "1 2 3"],
                             {"--ids": ["", "1 x", "[1.5]", "-1", "9" * 30, "[[1]]", "{}", "300", "1,2,,3", "[null]"],
                              "--errors": ["strict", "replace", "x"]}),
        "tokenizer-train": (["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", paths["data"],
                             "--out", _fresh(workdir, rng, "tok"), "--no-progress"],
                            {"--vocab-size": NUMBERS + ["255", "257", "100000"], "--pattern": PATTERNS,
                             "--special": STRINGS[:6], "--input": path_pool, "--kind": ["unigram", "wordpiece", "x"],
                             "--out": path_pool}),
        "scaling": (["scaling", "plan", "--flops", "1e20"],
                    {"--flops": NUMBERS + HUGE, "--params": NUMBERS + HUGE, "--tokens": NUMBERS + HUGE,
                     "--law": ["published", "x"] + path_pool}),
    }
    name = rng.choice(sorted(commands))
    argv, flags = commands[name]
    argv = list(argv)
    for _ in range(rng.choice((1, 1, 2))):
        flag = rng.choice(sorted(flags))
        pool = flags[flag]
        if flag in argv and pool is not None:
            argv[argv.index(flag) + 1] = rng.choice(pool)
        else:
            argv += [flag] if pool is None else [flag, rng.choice(pool)]
    return Case("flag", argv)


# ---- damaged files ----------------------------------------------------------------------------

def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            yield from _json_paths(v, prefix + (i,))


WORK = ("eval_iters", "max_iters")      # a huge value there is a long run that was asked for, not a bug


def _damage_json(rng, value):
    """value with one field anywhere in it replaced by another kind of value, or removed."""
    paths = [p for p in _json_paths(value) if p]
    if not paths:
        return rng.choice(VALUES)
    path = rng.choice(paths)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice([v for v in VALUES if path[-1] not in WORK or v != 10 ** 12])
    return value


def _damage_bytes(rng, data):
    how = rng.choice(("flip", "cut", "append", "header"))
    data = bytearray(data)
    if how == "flip" and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "cut":
        data = data[:rng.randrange(len(data) + 1)]
    elif how == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif len(data) >= 8:
        data[0:8] = rng.choice((0, 1, 7, 2 ** 40, 2 ** 63)).to_bytes(8, "little")
    return bytes(data)


def _set_digest(directory, name):
    state_path = os.path.join(directory, "state.json")
    try:
        state = json.load(open(state_path))
        with open(os.path.join(directory, name), "rb") as f:
            state["digests"][name] = hashlib.sha256(f.read()).hexdigest()
        with open(state_path, "w") as f:
            json.dump(state, f)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass


def _damage_tree(rng, directory, files, digests_from=None):
    """Damage one of files (names relative to directory) one way; digests_from: the checkpoint whose
    state.json holds the digests (kept right half the time, so the checks behind them are reached)."""
    name = rng.choice(files)
    path = os.path.join(directory, *name.split("/"))
    how = rng.choice(("json", "json", "bytes", "bytes", "dir", "link", "remove", "fifo"))
    if how == "json" and name.endswith(".json"):
        value = _damage_json(rng, json.load(open(path)))
        with open(path, "w") as f:
            json.dump(value, f)
    elif how in ("json", "bytes"):
        with open(path, "rb") as f:
            data = _damage_bytes(rng, f.read())
        with open(path, "wb") as f:
            f.write(data)
    else:
        os.remove(path)
        if how == "dir":
            os.mkdir(path)
        elif how == "link":
            os.symlink("/dev/zero", path)
        elif how == "fifo" and hasattr(os, "mkfifo"):
            os.mkfifo(path)
    if digests_from and how in ("json", "bytes") and name != "state.json" and rng.random() < 0.6:
        _set_digest(digests_from, name)
    return f"{how} {name}"


def _checkpoint_case(rng, paths, workdir):
    from ..checkpoint import resolve_checkpoint
    from ..checkpoint_files import listing
    run = _fresh(workdir, rng, "run")
    shutil.copytree(paths["run"], run, symlinks=True)
    committed = resolve_checkpoint(run)
    if rng.random() < 0.15:
        with open(os.path.join(run, "latest"), "wb") as f:
            f.write(rng.choice((b"", b"checkpoint-9", UP.encode(), b"checkpoint-2\x00", b"\xff" * 4, b"/tmp")))
    else:
        _damage_tree(rng, committed, listing(committed) + ["state.json"], committed)
    command = rng.choice(("generate",) * 6 + ("eval",) * 2 + ("resume", "quantize"))
    argv = {"generate": ["generate", "--ckpt", run, "--prompt", "to", "--max-new-tokens", "2", "--no-stream"],
            "eval": ["eval", "--ckpt", run, "--data", paths["data"], "--no-progress"],
            "resume": ["train", "--out", run, "--data", paths["data"], "--resume", "--max-iters", "3", "--no-progress"],
            "quantize": ["quantize", "--ckpt", run, "--scheme", "q8_0", "--out", run + "-q", "--no-progress"]}[command]
    return Case("checkpoint", argv)


def _tokenizer_case(rng, paths, workdir):
    kind = rng.choice(("bpe", "unigram", "wordpiece", "char"))
    directory = _fresh(workdir, rng, f"tok-{kind}")
    shutil.copytree(paths[f"tok-{kind}"], directory)
    _damage_tree(rng, directory, sorted(os.listdir(directory)))
    return Case("tokenizer", ["tokenizer", "encode", "--tokenizer", directory, "--text", "to be or not"])


def _config_case(rng, paths, workdir):
    path = _fresh(workdir, rng, "config") + ".json"
    with open(path, "w") as f:
        json.dump(_damage_json(rng, json.loads(json.dumps(TINY))), f)
    return Case("config", ["train", "--config", path, "--data", paths["data"], "--out", _fresh(workdir, rng, "out"),
                           "--no-progress", "--max-iters", "1"])


def cases(n, seed, workdir, subprocesses=0):
    """n generated cases (the first `subprocesses` of them also run in a subprocess)."""
    rng = random.Random(seed)
    paths = prepare(workdir)
    makers = [_flag_case] * 5 + [_checkpoint_case] * 3 + [_config_case, _tokenizer_case]
    out = [rng.choice(makers)(rng, paths, workdir) for _ in range(n)]
    for case in out[:subprocesses]:
        case.subprocess = True
    if subprocesses:        # what OpenMP does with the environment shows only in a fresh process
        out.append(Case("flag", ["generate", "--ckpt", paths["run"], "--max-new-tokens", "2", "--threads", "2"],
                        subprocess=True, env={"OMP_NUM_THREADS": "1000000"}))
    return out


# ---- running and judging ----------------------------------------------------------------------

class _Deadline(BaseException):
    """Raised by SIGALRM: a case ran past its deadline."""


def judge(code, err):
    """The verdict on a run's exit code and stderr."""
    lines = [line for line in err.splitlines() if "error" in line and line.startswith("minillm")]
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if "internal error" in err:
        return "internal error"
    if code == 0:
        return "ok"
    if code == 2:
        return "refused" if len(lines) == 1 else "several error lines"
    if code == 1 and len(lines) == 1 and any(w in lines[0] for w in ("the loss", "gradient norm", "weights hold",
                                                                       "val loss", "train loss")):
        return "diverged"
    if code is not None and code < 0:
        return "crash"
    return "bad exit"


def _run_here(case, deadline):
    from .. import get_num_threads, set_num_threads
    from ..cli import main
    threads = get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(_Deadline()))
    signal.alarm(deadline)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(case.argv))
    except _Deadline:
        return "hang", f"past {deadline} s"
    except SystemExit as exit_:
        code = exit_.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        set_num_threads(threads)
    return judge(code, err.getvalue()), err.getvalue().strip()[-300:]


def _passable(argv):
    """Whether argv can go to a new process (a lone surrogate such as \ud800 cannot be encoded)."""
    try:
        [os.fsencode(a) for a in argv]
        return True
    except UnicodeEncodeError:
        return False


def _run_subprocess(case, deadline, root):
    env = dict(os.environ, PYTHONPATH=root, **case.env)
    try:
        run = subprocess.run([sys.executable, "-W", "ignore", "-m", "minillm", *case.argv], env=env, timeout=deadline,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "hang", f"past {deadline} s"
    return judge(run.returncode, run.stderr), run.stderr.strip()[-300:]


def run(all_cases, deadline=20, workdir=None):
    """Run every case (in workdir as the current directory); returns [Outcome]."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    here = os.getcwd()
    outcomes = []
    try:
        if workdir:
            os.chdir(workdir)
        for case in all_cases:
            if not case.env:
                verdict, detail = _run_here(case, deadline)
                outcomes.append(Outcome(case.kind, case.argv, verdict, detail))
            if case.subprocess and _passable(case.argv):
                verdict, detail = _run_subprocess(case, 3 * deadline, root)
                outcomes.append(Outcome(case.kind + " (subprocess)", case.argv, verdict, detail))
    finally:
        os.chdir(here)
    return outcomes


def report(outcomes, seconds=None):
    """A table of verdicts by kind, then each failure."""
    table = Counter((o.kind, o.verdict) for o in outcomes)
    kinds = sorted({o.kind for o in outcomes})
    verdicts = sorted({o.verdict for o in outcomes}, key=lambda v: (v not in PASSING, v))
    lines = [f"{len(outcomes)} cases" + (f" in {seconds:.1f} s" if seconds is not None else ""),
             "kind".ljust(24) + "".join(v.rjust(12) for v in verdicts)]
    lines += [k.ljust(24) + "".join(str(table[k, v]).rjust(12) for v in verdicts) for k in kinds]
    lines += [f"FAIL {o.verdict}: minillm {' '.join(map(repr, o.argv))}\n    {o.detail}"
              for o in outcomes if o.verdict not in PASSING]
    return "\n".join(lines)


def fuzz(n, seed, workdir, subprocesses=0, deadline=20):
    """Generate and run n cases; returns (outcomes, seconds)."""
    start = time.perf_counter()
    outcomes = run(cases(n, seed, workdir, subprocesses), deadline, workdir)
    return outcomes, time.perf_counter() - start
