"""`minillm scaling count | sweep | fit | plan` (docs/scaling.md).

    minillm scaling count --preset llama-15m                 # parameters and FLOPs per token
    minillm scaling sweep --out out/scaling --grid quick --plot
    minillm scaling sweep --out out/scaling                  # the default grid, ~15 min on 2 quiet cores
    minillm scaling fit --results out/scaling/results.jsonl --plot
    minillm scaling plan --flops 1e21                        # the compute-optimal N and D (published law)
    minillm scaling plan --params 1e9 --law out/scaling/fit.json --json

Bad input prints one line and exits with code 2, as every minillm command.
"""
import json
import os
import sys

from ..config import existing_file, output_directory, positive_float, positive_int, seed_int, thread_count


def add_parser(sub):
    """Register the `scaling` command on the subparsers of the top-level parser."""
    parser = sub.add_parser("scaling", help="parameter/FLOP counts, scaling sweeps, Kaplan and Chinchilla fits, plans")
    ssub = parser.add_subparsers(dest="scaling_command", metavar="ACTION")

    p = ssub.add_parser("count", help="parameters (total, non-embedding, active) and FLOPs per token of a config")
    p.add_argument("--preset", help="a named preset (default shakespeare-char)")
    p.add_argument("--config", type=existing_file, help="a JSON file: a 'model' section, or the model config itself")
    p.add_argument("--vocab-size", type=positive_int, help="when the config leaves it to the tokenizer (default: the "
                   "built-in corpus's characters)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_count)

    p = ssub.add_parser("sweep", help="train a grid of small models, fit both laws, plot")
    p.add_argument("--out", required=True, type=output_directory, metavar="DIR", help="results.jsonl, fit.json and the plots go here")
    p.add_argument("--grid", choices=["quick", "default"], default="default",
                   help="quick: seconds; default: 5 sizes x 4 token budgets, ~15 min on 2 quiet cores")
    p.add_argument("--sizes", help="model sizes instead of the grid's: LAYERSxWIDTH[xHEADS],... e.g. 2x64,4x128x4")
    p.add_argument("--tokens", help="token budgets instead of the grid's, e.g. 250k,1M,2M")
    p.add_argument("--block-size", type=positive_int, help="context length (default: the grid's)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step (default: the grid's)")
    p.add_argument("--eval-tokens", type=positive_int, help="validation tokens each run is scored on (default: the grid's)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument("--data", type=existing_file, help="UTF-8 text to train on (default: the built-in tiny Shakespeare)")
    p.add_argument("--threads", type=thread_count, help="OpenMP threads")
    p.add_argument("--n-boot", type=positive_int, default=200, help="bootstrap resamples for the intervals (default 200)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the estimated duration, train nothing")
    p.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak (no MFU in the records)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoint in DIR/runs/")
    p.add_argument("--plot", action="store_true", help="write the PNG plots (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_sweep)

    p = ssub.add_parser("fit", help="fit both laws to a results.jsonl (writes fit.json beside it)")
    p.add_argument("--results", required=True, type=existing_file, metavar="FILE")
    p.add_argument("--out", type=output_directory, metavar="DIR", help="where fit.json and the plots go (default: "
                   "beside --results)")
    p.add_argument("--n-boot", type=positive_int, default=200, help="bootstrap resamples for the intervals (default 200)")
    p.add_argument("--no-scipy", action="store_true", help="use the NumPy BFGS even when scipy is installed")
    p.add_argument("--plot", action="store_true", help="write the PNG plots (needs matplotlib)")
    p.set_defaults(run=cmd_fit)

    p = ssub.add_parser("plan", help="the compute-optimal model size and token count, and the predicted loss")
    p.add_argument("--flops", type=positive_float, help="training compute C in FLOPs (C = 6 N D)")
    p.add_argument("--params", type=positive_float, help="model size N: alone, the compute-optimal run for N; with --flops, "
                   "D = C / 6N")
    p.add_argument("--tokens", type=positive_float, help="training tokens D: alone, the compute-optimal run for D; with "
                   "--flops, N = C / 6D")
    p.add_argument("--law", default="published", help="'published' (Hoffmann et al. 2022) or a fit.json "
                   "(default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_plan)

    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])
    return parser


def _model_config(args):
    from ..config import check_kind, read_config
    from ..data import build_tokenizer, read_text
    from ..models import load_preset, model_config_from_dict
    if args.config and args.preset:
        raise ValueError("scaling count: pass --preset or --config, not both")
    where = f"config file {args.config!r}" if args.config else "preset"
    if args.config:
        spec = read_config(args.config)
        model = dict(check_kind(spec.get("model", spec), dict, f"{where}: model"))
        model.pop("description", None)
    else:
        model = dict(load_preset(args.preset or "shakespeare-char")["model"])
    if args.vocab_size is not None:
        model["vocab_size"] = args.vocab_size
    if model.get("vocab_size") is None:
        model["vocab_size"] = build_tokenizer("char", read_text()).vocab_size
    return model_config_from_dict(model, f"{where}: model")


def cmd_count(args):
    from .counts import count_parameters, counts
    config = _model_config(args)
    family = getattr(config, "family", "decoder")
    if family != "decoder":            # the encoder families: exact counts; the FLOPs formulas are the decoder's
        c = {"params": count_parameters(config), "non_embedding_params": count_parameters(config, True)}
        if args.json:
            print(json.dumps(c))
            return 0
        print(f"parameters ({family}):{' ' * (19 - len(family))}{c['params']:>15,}")
        print(f"  without embeddings:       {c['non_embedding_params']:>15,}")
        print("FLOPs per token: counted for decoder models only")
        return 0
    c = counts(config)
    if args.json:
        print(json.dumps(c))
        return 0
    moe = getattr(config, "n_experts", 0)
    print(f"parameters:                 {c['params']:>15,}")
    print(f"  without embeddings:       {c['non_embedding_params']:>15,}")
    if moe:
        print(f"  active per token:         {c['active_params']:>15,}   (top_k of {moe} experts)")
        print(f"  active, no embeddings:    {c['active_non_embedding_params']:>15,}")
    print(f"Kaplan's N (blocks only):   {c['kaplan_n']:>15,}")
    print(f"training FLOPs per token:   {c['flops_per_token_6n']:>15,}   6N")
    print(f"  with attention:           {c['flops_per_token']:>15,}   6N + 6 n_layer n_ctx d_model")
    print(f"  with attention and head:  {c['flops_per_token_with_head']:>15,}   + 6 d_model n_vocab")
    return 0


def _grid(args):
    from .sweep import GRIDS, parse_numbers, parse_sizes
    grid = dict(GRIDS[args.grid])
    if args.sizes:
        grid["sizes"] = parse_sizes(args.sizes)
    if args.tokens:
        grid["tokens"] = [int(t) for t in parse_numbers(args.tokens, "--tokens")]
    for name in ("block_size", "batch_size", "eval_tokens"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive int, got {value}")
            grid[name] = value
    return grid


def _fit_and_report(records, out, n_boot, plot, use_scipy=None):
    from ..files import write_json
    from .sweep import fit_results, format_fit
    fit = fit_results(records, n_boot=n_boot, use_scipy=use_scipy)
    path = os.path.join(out, "fit.json")
    write_json(path, fit)
    print(format_fit(fit))
    print(f"fit: {path}")
    if plot:
        from .plots import plot_all
        try:
            for p in plot_all(records, fit, out):
                print(f"plot: {p}")
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    return fit


def cmd_sweep(args):
    from .. import set_num_threads
    from .counts import measure_matmul_peak
    from .sweep import estimate_seconds, format_runs, run_specs, run_sweep
    grid = _grid(args)
    if args.threads:
        set_num_threads(args.threads)
    if args.dry_run:
        from ..data import build_tokenizer, read_text
        specs = run_specs(grid, build_tokenizer("char", read_text(args.data)).vocab_size, args.seed, args.lr,
                          args.data)
        for s in specs:
            print(f"{s['key']:<44} {s['tokens']:>10,} tokens  ~{estimate_seconds(s):6.0f}s")
        print(f"{len(specs)} runs, estimated {sum(estimate_seconds(s) for s in specs) / 60:.1f} min on 2 cores")
        return 0
    peak = None if args.no_peak else measure_matmul_peak()
    if peak:
        print(f"matmul peak (1024^3 sgemm): {peak / 1e9:.1f} GFLOP/s", file=sys.stderr)
    records, trained = run_sweep(args.out, grid, args.data, args.seed, args.lr, peak, not args.no_progress,
                                 args.keep_checkpoints)
    print(format_runs(records))
    print(f"{len(records)} runs in {os.path.join(args.out, 'results.jsonl')} ({trained} trained now)")
    if len(records) < 2:
        print("(one run: nothing to fit; give more --sizes or --tokens)")
        return 0
    _fit_and_report(records, args.out, args.n_boot, args.plot)
    return 0


def cmd_fit(args):
    from .sweep import read_results
    if not os.path.isfile(args.results):
        raise ValueError(f"--results: {args.results!r} does not exist")
    records = read_results(args.results)
    out = args.out or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out, exist_ok=True)
    _fit_and_report(records, out, args.n_boot, args.plot, use_scipy=False if args.no_scipy else None)
    return 0


def cmd_plan(args):
    from .laws import load_law, plan
    law = load_law(args.law)
    result = plan(law, args.flops, args.params, args.tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    opt = result["optimal"]
    print(f"law: {args.law} (E={law.E:.4g}, A={law.A:.4g}, B={law.B:.4g}, alpha={law.alpha:.4g}, beta={law.beta:.4g})")
    print(f"{result['mode']}:")
    print(f"  compute C        {result['flops']:.4g} FLOPs")
    print(f"  parameters N     {result['params']:.4g}")
    print(f"  tokens D         {result['tokens']:.4g}")
    print(f"  tokens/param     {result['tokens_per_param']:.4g}")
    print(f"  predicted loss   {result['loss']:.4f}")
    if result["mode"] == "fixed budget":
        print(f"compute-optimal at this C: N {opt['params']:.4g}, D {opt['tokens']:.4g}, loss {opt['loss']:.4f}")
    return 0
