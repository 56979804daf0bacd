"""Benchmark minillm's tokenizers against tiktoken, Hugging Face `tokenizers`, sentencepiece and
pure-Python BPE loops, on tinyshakespeare and 10 MB of distinct Python docstrings (the standard
library's 2.3 MB, then installed packages').

    python benchmarks/tokenizer_speed.py            # everything (several minutes on 2 busy cores)
    python benchmarks/tokenizer_speed.py --quick    # 1 MB of docstrings, fewer repeats, no 32768 run

Rows: median seconds (interleaved with the baselines in this process, benchmarks/harness.py),
throughput, and ratio = baseline time / our time (> 1: we are faster). The pure-Python BPE
trainers would take hours to reach 32768 tokens, so they are timed for their first K merges and
their time for the full run is that extrapolated linearly (marked "extrapolated"; a merge gets
cheaper as words shrink, so the real figure is a little lower). Peers missing are shown as "-".
Writes benchmarks/results/tokenizers.json.
"""
import argparse
import ast
import importlib.util
import os
import sys
import sysconfig
import time
from collections import Counter

# This file is named like HF's `tokenizers` package: take benchmarks/ off sys.path so that the
# import below finds the real one, load the harness by path, and put this checkout's minillm first.
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]
_spec = importlib.util.spec_from_file_location("harness", os.path.join(HERE, "harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
compare, machine_info, print_table, write_json = harness.compare, harness.machine_info, harness.print_table, harness.write_json

from minillm.data import read_text  # noqa: E402
from minillm.tokenizers import BPETokenizer, UnigramTokenizer, WordPieceTokenizer  # noqa: E402
from minillm.tokenizers.bpe import PATTERNS, count_words, merge_ids, train_merges_reference  # noqa: E402

# GPT-2's rank file is not in the repository (1.6 MB): set MINILLM_DATA_DIR to a folder holding
# gpt2.tiktoken to time encoding with GPT-2's ranks; without it that row says so and is skipped.
DATA = os.environ.get("MINILLM_DATA_DIR")


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


tiktoken, hf, spm = optional("tiktoken"), optional("tokenizers"), optional("sentencepiece")


def python_docstrings(target_bytes):
    """Docstrings of modules, classes and functions: the standard library's first (2.3 MB on
    Python 3.11, its tests included), then the installed packages', to target_bytes of distinct
    text, joined by blank lines. Returns (text, where it came from)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    roots = [stdlib] + sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    out, size, seen = [], 0, set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            if root == stdlib and "site-packages" in folder:
                continue
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        tree = ast.parse(f.read())
                except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc and doc not in seen:
                            seen.add(doc)
                            out.append(doc)
                            size += len(doc.encode("utf-8")) + 2
                            if size >= target_bytes:
                                return "\n\n".join(out), "stdlib + site-packages"
    return "\n\n".join(out), "stdlib + site-packages (all of them)"


def minbpe_merges(text, n_merges, pattern):
    """minbpe's RegexTokenizer.train loop, verbatim in spirit: ids per pre-token chunk (every
    occurrence, not unique words), recount all pairs, merge the top pair everywhere."""
    import regex
    chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
    for k in range(n_merges):
        stats = Counter()
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                stats[pair] += 1
        if not stats:
            break
        pair = max(stats, key=stats.get)
        chunks = [merge_ids(ids, pair[0], pair[1], 256 + k) for ids in chunks]


def mb(text):
    return len(text.encode("utf-8")) / 1e6


def bpe_encode_rows(corpora, repeats):
    path = os.path.join(DATA, "gpt2.tiktoken") if DATA else None
    if path is None or not os.path.exists(path):
        return [dict(task="bpe encode gpt2", note=f"no {path}" if path else "no gpt2.tiktoken (set MINILLM_DATA_DIR)")]
    ours = BPETokenizer.from_tiktoken(path, {"<|endoftext|>": 50256})
    enc = (tiktoken.Encoding("gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=ours.ranks,
                             special_tokens={"<|endoftext|>": 50256}) if tiktoken else None)
    rows = []
    for name, text in corpora.items():
        assert enc is None or ours.encode(text) == enc.encode_ordinary(text), "GPT-2 ids differ from tiktoken"
        t = compare(lambda: ours.encode(text), {"tiktoken": lambda: enc.encode_ordinary(text)} if enc else {},
                    repeats=repeats)
        rows.append(dict(task="bpe encode gpt2, 1 thread", corpus=name, MB=mb(text), ours=t["ours"],
                         peer="tiktoken", peer_s=t.get("tiktoken"), ours_MBps=mb(text) / t["ours"],
                         peer_MBps=mb(text) / t["tiktoken"] if enc else None,
                         ratio=t["tiktoken"] / t["ours"] if enc else None))
        docs = text.split("\n\n")
        t = compare(lambda: ours.encode_batch(docs, num_threads=2),
                    {"tiktoken": lambda: enc.encode_ordinary_batch(docs, num_threads=2)} if enc else {},
                    repeats=repeats)
        rows.append(dict(task="bpe encode_batch gpt2, 2 threads", corpus=name, MB=mb(text), ours=t["ours"],
                         peer="tiktoken", peer_s=t.get("tiktoken"), ours_MBps=mb(text) / t["ours"],
                         peer_MBps=mb(text) / t["tiktoken"] if enc else None,
                         ratio=t["tiktoken"] / t["ours"] if enc else None))
    small = corpora["tinyshakespeare"][:100_000]
    t = compare(lambda: ours.encode(small), {"python reference": lambda: ours.encode_reference(small)},
                repeats=repeats)
    rows.append(dict(task="bpe encode gpt2 vs our Python reference", corpus="shakespeare 100 KB", MB=mb(small),
                     ours=t["ours"], peer="python reference", peer_s=t["python reference"],
                     ours_MBps=mb(small) / t["ours"], peer_MBps=mb(small) / t["python reference"],
                     ratio=t["python reference"] / t["ours"]))
    return rows


def hf_bpe_train(text, vocab_size):
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return tok


def bpe_train_rows(corpora, sizes, repeats, k_python):
    rows = []
    for name, text in corpora.items():
        for size in sizes:
            tok = BPETokenizer.train(text, size)
            base = {"hf tokenizers": lambda: hf_bpe_train(text, size)} if hf else {}
            t = compare(lambda: BPETokenizer.train(text, size), base, repeats=repeats, warmup=0)
            n = tok.vocab_size - 257
            # The pure-Python loops, timed for k merges and extrapolated to n.
            probe = BPETokenizer({bytes([b]): b for b in range(256)})
            start = time.perf_counter()
            words = count_words([text], probe, ["<|endoftext|>"])
            train_merges_reference(words, k_python)
            ref = (time.perf_counter() - start) / k_python * n
            start = time.perf_counter()
            minbpe_merges(text, max(2, k_python // 4), PATTERNS["gpt2"])
            mini = (time.perf_counter() - start) / max(2, k_python // 4) * n
            row = dict(task=f"bpe train to {size}", corpus=name, MB=mb(text), vocab=tok.vocab_size, ours=t["ours"])
            rows.append({**row, "peer": "hf tokenizers", "peer_s": t.get("hf tokenizers"),
                         "ratio": t["hf tokenizers"] / t["ours"] if hf else None})
            rows.append({**row, "peer": "our python reference (extrapolated)", "peer_s": ref, "ratio": ref / t["ours"]})
            rows.append({**row, "peer": "minbpe loop (extrapolated)", "peer_s": mini, "ratio": mini / t["ours"]})
    return rows


def unigram_wordpiece_rows(text, vocab_size, repeats, tmp):
    rows = []
    lines = [line for line in text.split("\n") if line.strip()]
    base = {}
    if spm:
        def spm_train():
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=os.path.join(tmp, "spm"),
                                           vocab_size=vocab_size, model_type="unigram", minloglevel=2,
                                           byte_fallback=True, character_coverage=1.0)
        base["sentencepiece"] = spm_train
    if hf:
        def hf_unigram():
            tok = hf.Tokenizer(hf.models.Unigram())
            tok.pre_tokenizer = hf.pre_tokenizers.Metaspace()
            tok.train_from_iterator(lines, hf.trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False,
                                                                      unk_token="<unk>"))
            return tok
        base["hf tokenizers"] = hf_unigram
    t = compare(lambda: UnigramTokenizer.train(text, vocab_size), base, repeats=repeats, warmup=0)
    uni = UnigramTokenizer.train(text, vocab_size)
    for peer in base or [None]:
        rows.append(dict(task=f"unigram train to {vocab_size}", corpus="tinyshakespeare", MB=mb(text), ours=t["ours"],
                         vocab=uni.vocab_size, peer=peer, peer_s=t.get(peer), ratio=t[peer] / t["ours"] if peer else None))
    enc = {}
    if spm:
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "spm.model"))
        enc["sentencepiece"] = lambda: sp.encode(lines)
    if hf:
        hft = hf_unigram()
        enc["hf tokenizers"] = lambda: hft.encode_batch(lines)
    t = compare(lambda: [uni.encode(x) for x in lines], enc, repeats=repeats)
    for peer in enc or [None]:
        rows.append(dict(task="unigram encode", corpus="tinyshakespeare", MB=mb(text), ours=t["ours"], peer=peer,
                         peer_s=t.get(peer), ratio=t[peer] / t["ours"] if peer else None))

    base = {}
    if hf:
        def hf_wordpiece():
            tok = hf.BertWordPieceTokenizer(lowercase=True)
            tok.train_from_iterator(lines, vocab_size=vocab_size, show_progress=False)
            return tok
        base["hf tokenizers"] = hf_wordpiece
    t = compare(lambda: WordPieceTokenizer.train(text, vocab_size), base, repeats=repeats, warmup=0)
    wp = WordPieceTokenizer.train(text, vocab_size)
    rows.append(dict(task=f"wordpiece train to {vocab_size}", corpus="tinyshakespeare", MB=mb(text), ours=t["ours"],
                     vocab=wp.vocab_size, peer="hf tokenizers" if hf else None, peer_s=t.get("hf tokenizers"),
                     ratio=t["hf tokenizers"] / t["ours"] if hf else None))
    enc = {}
    if hf:
        hwp = hf.BertWordPieceTokenizer({tok: i for i, tok in enumerate(wp.vocab)}, lowercase=True)
        assert hwp.encode(text, add_special_tokens=False).ids == wp.encode(text), "WordPiece ids differ from HF"
        enc["hf tokenizers"] = lambda: hwp.encode_batch(lines, add_special_tokens=False)
    t = compare(lambda: [wp.encode(x) for x in lines], enc, repeats=repeats)
    rows.append(dict(task="wordpiece encode (same vocab)", corpus="tinyshakespeare", MB=mb(text), ours=t["ours"],
                     peer="hf tokenizers" if hf else None, peer_s=t.get("hf tokenizers"),
                     ratio=t["hf tokenizers"] / t["ours"] if hf else None))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["encode", "train", "others"])
    args = parser.parse_args()
    import tempfile

    shakespeare = read_text()      # the built-in corpus
    docs, source = python_docstrings(1_000_000 if args.quick else 10_000_000)
    corpora = {"tinyshakespeare": shakespeare, f"py docstrings {mb(docs):.1f} MB": docs}
    repeats = 3 if args.quick else 5
    rows = []
    if args.only in (None, "encode"):
        rows += bpe_encode_rows(corpora, repeats)
    if args.only in (None, "train"):
        rows += bpe_train_rows(corpora, [4096] if args.quick else [4096, 32768], 1 if args.quick else 3,
                               k_python=8 if args.quick else 20)
    if args.only in (None, "others"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += unigram_wordpiece_rows(shakespeare, 4096, 1 if args.quick else 3, tmp)
    print_table(rows, [("task", "task", "{}"), ("corpus", "corpus", "{}"), ("MB", "MB", "{:.2f}"),
                       ("vocab", "vocab", "{}"), ("ours", "ours s", "{:.3f}"), ("ours_MBps", "ours MB/s", "{:.1f}"),
                       ("peer", "baseline", "{}"), ("peer_s", "base s", "{:.3f}"),
                       ("peer_MBps", "base MB/s", "{:.1f}"), ("ratio", "base/ours", "{:.2f}")])
    write_json(os.path.join(ROOT, "benchmarks", "results", "tokenizers.json"),
               {"machine": machine_info(), "quick": args.quick, "rows": rows,
                "peers": {"tiktoken": getattr(tiktoken, "__version__", None),
                          "tokenizers": getattr(hf, "__version__", None),
                          "sentencepiece": getattr(spm, "__version__", None)},
                "docstrings": {"MB": mb(docs), "source": source, "distinct": True},
                "note": "2 cores shared with other builds and tests while measured: figures are rough"})


if __name__ == "__main__":
    main()
