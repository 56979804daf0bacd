"""`minillm eval`'s long-context modes: --by-position [--plot], --passkey, --lost-in-the-middle.

    minillm eval --ckpt out/run --by-position --length 1024 --rope-scaling '{"rope_type": "dynamic", "factor": 4}'
    minillm eval --ckpt out/run --passkey --lengths 128,256 --depths 0,0.5,1
    minillm eval --ckpt out/run --lost-in-the-middle --pairs 8

Each prints one JSON object per line (a bucket, a length x depth cell, a position). --length beyond
the checkpoint's context runs the same weights at that length (with --rope-scaling if given), which
shows what each scaling does past the trained length. docs/long_context.md has the methods.
"""
import json
import os

from .config import UsageError


def add_arguments(p):
    g = p.add_argument_group("long context (docs/long_context.md)")
    g.add_argument("--by-position", action="store_true", help="the loss per bucket of positions")
    g.add_argument("--length", type=int, help="--by-position: window length (default: the context; longer runs the "
                   "same weights at that length)")
    g.add_argument("--buckets", type=int, default=8, help="--by-position: position buckets (default %(default)s)")
    g.add_argument("--rope-scaling", help="a JSON rope_scaling to evaluate with, e.g. "
                   "'{\"rope_type\": \"linear\", \"factor\": 4}'")
    g.add_argument("--plot", nargs="?", const="", help="--by-position: write a PNG (default loss_by_position.png in "
                   "the checkpoint)")
    g.add_argument("--passkey", action="store_true", help="passkey retrieval accuracy by length and depth")
    g.add_argument("--lengths", help="--passkey: prompt lengths in tokens, comma separated (default: half and all "
                   "of the context)")
    g.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="--passkey: needle depths in [0, 1]")
    g.add_argument("--trials", type=int, default=3, help="--passkey, --lost-in-the-middle: trials per cell")
    g.add_argument("--lost-in-the-middle", action="store_true", help="key-value retrieval accuracy by position")
    g.add_argument("--pairs", type=int, default=8, help="--lost-in-the-middle: key-value pairs (default %(default)s)")


def wanted(args):
    return args.by_position or args.passkey or args.lost_in_the_middle


def _numbers(text, kind, flag):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


def run(args, model, tokenizer, ids):
    from . import long_eval
    scaling = None
    if args.rope_scaling:
        try:
            scaling = json.loads(args.rope_scaling)
        except json.JSONDecodeError as error:
            raise UsageError(f"--rope-scaling is not JSON: {error}") from None
    length = args.length or model.config.block_size
    if length < 2:
        raise UsageError(f"--length must be at least 2, got {length}")
    if length != model.config.block_size or scaling:
        model = long_eval.with_context(model, length, scaling)
    if args.by_position:
        rows = long_eval.loss_by_position(model, ids, length, args.buckets)
        for row in rows:
            print(json.dumps(row))
        if args.plot is not None:
            path = args.plot or os.path.join(args.ckpt, "loss_by_position.png")
            print(json.dumps({"plot": plot_by_position(rows, path, model.config.block_size)}))
    if args.passkey:
        lengths = _numbers(args.lengths, int, "--lengths") if args.lengths else [length // 2, length - 8]
        depths = _numbers(args.depths, float, "--depths")
        if any(not 0 <= d <= 1 for d in depths):
            raise UsageError(f"--depths must be in [0, 1], got {args.depths}")
        for row in long_eval.passkey_retrieval(model, tokenizer, lengths, depths, args.trials):
            print(json.dumps(row))
    if args.lost_in_the_middle:
        if args.pairs < 1:
            raise UsageError(f"--pairs must be positive, got {args.pairs}")
        for row in long_eval.lost_in_the_middle(model, tokenizer, args.pairs, args.trials):
            print(json.dumps(row))
    return 0


def plot_by_position(rows, path, trained):
    from .plots import pyplot, save_figure
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([(r["start"] + r["end"]) / 2 for r in rows], [r["loss"] for r in rows], "o-")
    ax.axvline(trained, color="gray", ls="--", lw=0.8, label="context")
    ax.set_xlabel("position")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    return save_figure(fig, plt, path)
