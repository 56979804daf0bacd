"""Mixture-of-Experts layer cost: forward + backward of nn.MoE against a dense SwiGLU FFN of the
same active compute, and the tokens dropped at capacity.

    python benchmarks/moe.py                  # 8 experts, top-2, 4096 tokens, d=256, hidden 512; 2 threads
    python benchmarks/moe.py --quick          # fewer repeats, 1024 tokens (a smoke run)

Rows (median ms per forward + backward, timed interleaved in this process, benchmarks/harness.py):
  moe             nn.MoE, E SwiGLU experts of hidden h, top-k, no capacity limit (exactly k*N
                  token-FFNs: the same active compute as the dense row)
  moe cf=1.25     the same with the training capacity factor 1.25 (dropped tokens skip their FFN)
  dense           one SwiGLU FFN of hidden k*h on all N tokens: the same FLOPs as "moe"
  experts alone   the E experts' fwd+bwd on pre-gathered token slices of the sizes "moe" routed:
                  moe - experts alone = the router, dispatch and combine overhead
ratio = moe / dense (target <= 1.5: the dispatch overhead stays small).

Tokens dropped: the fraction of the k*N assignments over capacity at capacity factors 1.0 and
1.25, for a router at the model's initialisation (std 0.02: nearly uniform probabilities) and
for a skewed one (the same plus a per-expert logit offset ~ N(0, 0.25^2), which favours some
experts the way an unbalanced trained router does), on N(0, 1) inputs. Neither router is trained.
Writes benchmarks/results/moe.json.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare, machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm import nn  # noqa: E402
from minillm.autograd import Tensor  # noqa: E402
from minillm.nn.moe import capacity_of, route, top_k_experts  # noqa: E402

COLUMNS = [("case", "case", "{}"), ("ms", "ms fwd+bwd", "{:.2f}"), ("vs_dense", "/ dense", "{:.2f}x")]
DROP_COLUMNS = [("router", "router", "{}"), ("cf", "capacity factor", "{}"), ("capacity", "capacity/expert", "{}"),
                ("dropped", "assignments dropped", "{:.2%}"), ("max_load", "busiest expert", "{:.3f}")]


def fwd_bwd(module, x, dy, **kw):
    def step():
        xt = Tensor(x, requires_grad=True)
        module(xt, **kw).backward(dy)
        module.zero_grad()
    return step


def timing_rows(N, C, H, E, k, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    dy = rng.standard_normal((N, C)).astype(np.float32)
    moe = nn.MoE(C, H, E, top_k=k, capacity_factor=None, rng=rng)
    moe_cf = nn.MoE(C, H, E, top_k=k, capacity_factor=1.25, rng=rng)
    moe_cf.load_state_dict(moe.state_dict())
    dense = nn.SwiGLU(C, k * H, rng=rng)
    moe(x)
    plan = route(top_k_experts(moe.router(x).data, k), E)["plan"]   # the same sizes "moe" routes
    slices = {e: x[tokens] for e, (tokens, _) in plan.items()}

    def experts_alone():
        for e, xe in slices.items():
            moe.experts[e](Tensor(xe, requires_grad=True)).backward(dy[:len(xe)])
        moe.zero_grad()

    t = compare(fwd_bwd(moe, x, dy), {"moe cf=1.25": fwd_bwd(moe_cf, x, dy), "dense": fwd_bwd(dense, x, dy),
                                      "experts alone": experts_alone}, repeats=repeats)
    names = {"ours": "moe", "moe cf=1.25": "moe cf=1.25", "dense": "dense", "experts alone": "experts alone"}
    rows = [dict(case=names[key], ms=s * 1e3, vs_dense=s / t["dense"]) for key, s in t.items()]
    return rows, t["ours"] / t["dense"]


def drop_rows(N, C, E, k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C))
    rows = []
    w = rng.standard_normal((E, C)) * 0.02
    offset = rng.standard_normal(E) * 0.25
    for label, b in (("init (std 0.02)", 0.0), ("skewed (+ offsets)", offset)):
        logits = x @ w.T + b
        idx = top_k_experts(logits, k)                       # softmax keeps the order of the logits
        for cf in (1.0, 1.25):
            cap = capacity_of(N, E, k, cf)
            r = route(idx, E, cap)
            rows.append(dict(router=label, cf=cf, capacity=cap, dropped=1 - r["kept"].sum() / (N * k),
                             max_load=r["routed"].max() / (N * k)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 1024 tokens")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512, help="expert hidden size h (dense: top_k * h)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "moe.json"))
    args = parser.parse_args()
    minillm.set_num_threads(args.threads)
    N = 1024 if args.quick else args.tokens
    repeats = 3 if args.quick else args.repeats
    shape = dict(tokens=N, dim=args.dim, hidden=args.hidden, experts=args.experts, top_k=args.top_k)
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; minillm threads {minillm.get_num_threads()}, "
          f"backend {info['minillm']['backend']}; {shape}")
    print(f"median of {repeats} interleaved repeats; dense = one SwiGLU of hidden {args.top_k * args.hidden}\n")
    rows, ratio = timing_rows(N, args.dim, args.hidden, args.experts, args.top_k, repeats)
    print_table(rows, COLUMNS)
    print(f"\nMoE / dense = {ratio:.2f}x (target <= 1.5x)\n")
    drops = drop_rows(N, args.dim, args.experts, args.top_k)
    print_table(drops, DROP_COLUMNS)
    write_json(args.out, {"machine": info, "threads": args.threads, "repeats": repeats, "shape": shape,
                          "timing": rows, "moe_over_dense": ratio, "dropped": drops})


if __name__ == "__main__":
    main()
