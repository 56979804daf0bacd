"""Code and docs point only at files the repository holds: every path (minillm/..., csrc/..., docs/...)
and every source or doc file name (*.py, *.cpp, *.h, *.md) named in a source file, a test, a
benchmark or a doc exists here, and nothing points outside the repository."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", "results", "data"}
TEXT = (".py", ".md", ".cpp", ".h", ".toml", ".pyx", ".cfg")
PATH = re.compile(r"(?<![\w./-])((?:minillm|csrc|docs|tests|benchmarks|\.ci)/[\w./*-]*[\w*/])")
NAME = re.compile(r"(?<![\w./-])([\w-]+\.(?:py|cpp|h|md))\b")
GENERATED = ("benchmarks/results/",)        # written by the benchmarks when they run
NOT_FILES = {"immintrin.h", "omp.h", "cpuid.h", "unistd.h", "dirent.h", "sched.h",   # system headers
             "llama.cpp",                   # another project
             "llama-vocab.cpp",             # llama.cpp's file the GGUF pre-tokenizer patterns come from
             "transformer.h",               # the prefix of GPT-2's Hugging Face tensor names, not a file
             "probe.cpp",                   # the compiler probe setup.py writes to a temporary directory
             "self.h"}                      # an attribute (GPT-2's block list in the golden test)
OUTSIDE = re.compile(r"\.\./shared|/work/|\.\./\.\./")


def repository_files():
    files = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(directory, n), ROOT) for n in names]
    return sorted(f.replace(os.sep, "/") for f in files)


def text_files():
    return [f for f in repository_files() if f.endswith(TEXT) or f == ".ci/run"]


def mentions(pattern):
    """(file, line number, what) for every match of pattern in the repository's text files."""
    found = []
    for f in text_files():
        for number, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"), 1):
            found += [(f, number, m) for m in pattern.findall(line)]
    return found


def test_every_path_named_exists():
    missing = []
    for f, number, path in mentions(PATH):
        if path.startswith(GENERATED):
            continue
        exists = glob.glob(os.path.join(ROOT, path)) if "*" in path else os.path.exists(os.path.join(ROOT, path))
        if not exists:
            missing.append(f"{f}:{number}: {path}")
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_every_file_name_named_exists():
    names = {os.path.basename(f) for f in repository_files()}
    missing = [f"{f}:{number}: {name}" for f, number, name in mentions(NAME)
               if name not in names and name not in NOT_FILES]
    assert not missing, "file names that are not in the repository:\n" + "\n".join(missing)


def test_nothing_points_outside_the_repository():
    outside = [f"{f}:{number}: {what}" for f, number, what in mentions(OUTSIDE)
               if f != "tests/test_docs.py"]
    assert not outside, "pointers outside the repository:\n" + "\n".join(outside)


def test_no_merge_conflict_markers_are_left():
    marker = re.compile(r"^(<{7} |>{7} |={7}$)")
    left = [f"{f}:{number}" for f in text_files()
            for number, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"), 1) if marker.match(line)]
    assert not left, "merge-conflict markers left in:\n" + "\n".join(left)
