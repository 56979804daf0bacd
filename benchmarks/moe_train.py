"""Train shakespeare-moe (with and without the load-balancing loss) and its dense baseline of the
same active parameters (shakespeare-moe-dense) for the same steps on the built-in corpus, and
report each run's val loss, wall time and per-layer expert load.

    python benchmarks/moe_train.py                      # the presets' 2000 steps, 2 threads (slow)
    python benchmarks/moe_train.py --max-iters 20 --eval-iters 2     # a smoke run

Runs:  moe          shakespeare-moe as it is (aux_loss_coef 0.01, z_loss_coef 0.001)
       moe no-bal   shakespeare-moe with aux_loss_coef 0 (the z-loss stays)
       dense        shakespeare-moe-dense (one FFN of hidden top_k * d_ff)
Each run is the same as `minillm train --preset <name> [--aux-loss-coef 0] --max-iters N`: the
same seed, data order and schedule. Val loss is the cross-entropy of the final evaluation;
expert load is the fraction of top-k assignments per expert on its val batches. Runs are timed
one after another (not interleaved), so keep the machine quiet. Writes
benchmarks/results/moe_train.json; checkpoints go to --out (default a temporary directory).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info, print_table, write_json  # noqa: E402

import minillm  # noqa: E402
from minillm.data import build_tokenizer, read_text  # noqa: E402
from minillm.models import ModelConfig, load_preset  # noqa: E402
from minillm.train import TrainConfig, Trainer  # noqa: E402

RUNS = [("moe", "shakespeare-moe", {}), ("moe no-bal", "shakespeare-moe", {"aux_loss_coef": 0.0}),
        ("dense", "shakespeare-moe-dense", {})]
COLUMNS = [("run", "run", "{}"), ("params", "params", "{:,}"), ("active", "active/token", "{:,}"),
           ("val", "val loss", "{:.4f}"), ("train", "train loss", "{:.4f}"), ("seconds", "wall s", "{:.1f}"),
           ("imbalance", "max load x E", "{:.2f}")]


def active_parameters(model):
    """Parameters one token uses: all but the experts it was not routed to (top_k of E are used)."""
    c = model.config
    n = model.num_parameters()
    for m in model.moe_layers():
        per_expert = m.experts[0].num_parameters()
        n -= (c.n_experts - c.top_k) * per_expert
    return n


def run(name, preset, overrides, args, vocab, out_root):
    spec = load_preset(preset)
    model_config = ModelConfig(**dict(spec["model"], vocab_size=vocab, **overrides))
    train = dict(spec["train"], sample_tokens=0)
    if args.max_iters is not None:
        train.update(max_iters=args.max_iters, lr_decay_iters=min(train["lr_decay_iters"], args.max_iters))
    if args.eval_iters is not None:
        train["eval_iters"] = args.eval_iters
    train["eval_interval"] = train["max_iters"]          # evaluate at the start and the end only
    trainer = Trainer(model_config, TrainConfig(**train), os.path.join(out_root, name.replace(" ", "-")),
                      progress=not args.no_progress, log=lambda msg: None)
    result = trainer.run()
    load = result["expert_load"]
    row = dict(run=name, preset=preset, overrides=overrides, steps=result["step"],
               params=trainer.model.num_parameters(), active=active_parameters(trainer.model),
               val=result["losses"]["val"], train=result["losses"]["train"], seconds=result["seconds"],
               expert_load=load, imbalance=max(max(layer) * len(layer) for layer in load) if load else None)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-iters", type=int, help="steps per run (default: the presets' 2000)")
    parser.add_argument("--eval-iters", type=int, help="batches per evaluation (default: the presets' 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="checkpoint directory root (default: a temporary directory)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "results", "moe_train.json"))
    args = parser.parse_args()
    minillm.set_num_threads(args.threads)
    vocab = build_tokenizer("char", read_text(None), None).vocab_size
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; minillm threads {minillm.get_num_threads()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(name, preset, overrides, args, vocab, args.out or tmp) for name, preset, overrides in RUNS]
    print_table(rows, COLUMNS)
    print("\nexpert load per MoE layer (fraction of top-k assignments per expert, val batches; balanced = "
          f"{1 / 8:.3f}):")
    for r in rows:
        for i, layer in enumerate(r["expert_load"] or []):
            print(f"  {r['run']:<10} layer {i}: " + " ".join(f"{f:.3f}" for f in layer))
    write_json(args.json, {"machine": info, "threads": args.threads, "runs": rows})


if __name__ == "__main__":
    main()
