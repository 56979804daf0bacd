"""The `minillm` command line.

    minillm train      train a model (default: the shakespeare-char preset on the built-in corpus)
    minillm generate   sample text from a checkpoint, streaming it as it comes
    minillm eval       loss and perplexity of a checkpoint on held-out text
    minillm quantize   INT8 / INT4 copy of a checkpoint (generate and eval run on it as on any other)
    minillm tokenizer  train | encode | decode a BPE, Unigram or WordPiece tokenizer (minillm/tokenizers/cli.py)
    minillm scaling    count | sweep | fit | plan: scaling laws (minillm/scaling/cli.py)
    minillm demo       forward + backward of a tiny transformer block in each flavour, gradient-checked
    minillm info       how the native extension was built (OpenMP, SIMD, threads); with --model, a model's
    minillm chat       talk to a pretrained model (minillm/pretrained_cli.py, as are generate --model and export)
    minillm export     a model as GGUF or a Hugging Face directory
    minillm embed      sentence embeddings (and their cosine matrix) from an encoder (minillm/encoder_cli.py)

Bad input (a missing or corrupt checkpoint, data that is empty or not UTF-8, a prompt longer
than the context, ...) prints one line naming the problem and exits with code 2.
"""
import argparse
import json
import math
import os
import sys


class UsageError(ValueError):
    """Bad input from the command line: reported in one line, exit code 2."""


def cmd_demo(args):
    from .demo import main
    return main()


def cmd_info(args):
    from . import build_info
    if getattr(args, "model", None):
        from .pretrained_cli import model_info
        print("\n".join(model_info(args.model)))
        return 0
    print(json.dumps(build_info(), indent=2))
    return 0


def _configs(args):
    """The model and training configs: a preset or a config file, then the command-line overrides."""
    from .config import read_config
    from .models import load_preset
    from .train import TrainConfig
    if args.config:
        spec = read_config(args.config)
    else:
        spec = load_preset(args.preset)
    model, train = dict(spec.get("model", {})), dict(spec.get("train", {}))
    overrides = {"max_iters": args.max_iters, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                 "eval_interval": args.eval_interval, "eval_iters": args.eval_iters, "grad_accum": args.grad_accum,
                 "sample_tokens": args.sample_tokens, "tokenizer": args.tokenizer,
                 "tokenizer_vocab_size": args.tokenizer_vocab_size}
    train.update({k: v for k, v in overrides.items() if v is not None})
    if args.max_iters is not None and "lr_decay_iters" in train:
        train["lr_decay_iters"] = min(train["lr_decay_iters"], args.max_iters)
    if args.dropout is not None:
        model["dropout"] = args.dropout
    for key in ("aux_loss_coef", "z_loss_coef"):            # MoE router losses (0 turns one off)
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    train_config = TrainConfig.from_dict(train)
    return model, train_config


def _prepare_train(args, out):
    """The run's model and training configs, after checking --out against --resume/--overwrite
    (and clearing it for --overwrite). Under MPI only rank 0 runs this."""
    from .data import read_text
    from .families import build_tokenizer
    from .models import model_config_from_dict
    model_spec, train_config = _configs(args)
    has_checkpoint = os.path.exists(os.path.join(out, "state.json"))
    if has_checkpoint and not (args.resume or args.overwrite):
        raise UsageError(f"{out!r} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                         "start over, or --out for another directory")
    if args.resume and not has_checkpoint:
        raise UsageError(f"--resume: no checkpoint in {out!r}")
    if model_spec.get("vocab_size") is None:       # the tokenizer decides
        model_spec["vocab_size"] = build_tokenizer(model_spec, train_config, read_text(args.data)).vocab_size
    model_config = model_config_from_dict(model_spec)
    if args.overwrite and has_checkpoint and not args.resume:
        for name in ("state.json", "train_log.jsonl"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    return model_config, train_config


def cmd_train(args):
    from . import distributed
    from .plots import plot_expert_load, plot_losses
    from .train import Trainer, TrainingDiverged
    try:       # `mpiexec -n N minillm train` (or --distributed): one rank of N; else this process alone
        comm = distributed.from_environment(args.distributed, args.comm_timeout)
    except RuntimeError as error:
        raise UsageError(str(error)) from None
    root = comm.rank == 0
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    out = args.out or os.path.join("out", args.preset if not args.config else
                                   os.path.splitext(os.path.basename(args.config))[0])
    parallel = distributed.ParallelConfig(zero=args.zero, bucket_mb=args.bucket_mb, overlap=not args.no_overlap)

    try:
        model_config, train_config = comm.run_on_root(lambda: _prepare_train(args, out))
    except distributed.RootFailed:
        return 0                                  # rank 0 reports the problem

    def train():
        trainer = Trainer(model_config, train_config, out, args.data, resume=args.resume,
                          progress=not args.no_progress, log=lambda msg: print(msg, file=sys.stderr),
                          comm=comm, parallel=parallel)
        if root:
            _describe(trainer, comm)
        return trainer, trainer.run()

    try:
        trainer, result = distributed.stop_all_on_error(comm, train, passes=(TrainingDiverged, distributed.RootFailed))
    except distributed.RootFailed:
        return 0
    except TrainingDiverged as error:
        if root:
            print(f"minillm: error: {error}", file=sys.stderr)
        return 1 if root else 0
    if not root:
        return 0
    losses = result["losses"] or {}
    print(f"done: step {result['step']}, train loss {losses.get('train', float('nan')):.4f}, "
          f"val loss {losses.get('val', float('nan')):.4f}, {result['seconds']:.1f}s, "
          f"peak memory {result['peak_memory_mib']:.0f} MiB; checkpoint in {out}")
    if comm.size > 1:
        print(f"rank 0 of {comm.size}: optimizer state {result['optimizer_state_mib']:.3f} MiB")
    if result.get("expert_load"):
        print("expert load (fraction of top-k assignments per expert" +
              (", val batches)" if losses.get("expert_load") else ", last step)"))
        for block, load in zip(trainer.model.moe_stats()["blocks"], result["expert_load"]):
            print(f"  block {block}: " + " ".join(f"{f:.3f}" for f in load))
    if args.plot:
        print(f"loss curve: {plot_losses(out)}")
        if result.get("expert_load"):
            print(f"expert load: {plot_expert_load(out)}")
    if trainer.config.sample_tokens:
        print("\n--- sample ---")
        print(trainer.sample(max_new_tokens=trainer.config.sample_tokens))
    return 0


def _describe(trainer, comm):
    from .families import describe_data
    n, c, model_config = trainer.model.num_parameters(), trainer.config, trainer.model.config
    family = getattr(model_config, "family", "decoder")
    print(f"model: {n / 1e6:.2f}M parameters ({trainer.model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M "
          f"without embeddings), {family + ', ' if family != 'decoder' else ''}vocab {model_config.vocab_size}, "
          f"context {model_config.block_size}; {describe_data(trainer.data)}", file=sys.stderr)
    if comm.size > 1:
        rows = c.batch_size * c.grad_accum
        print(f"data parallel: {comm.size} ranks share each batch of {rows} rows"
              + (", AdamW moments sharded (ZeRO-1)" if trainer.dp.config.zero else ""), file=sys.stderr)


def _load(path):
    from . import checkpoint as ckpt
    return ckpt.build_model(ckpt.load_checkpoint(path))


def cmd_generate(args):
    from .generate import generate
    if bool(args.ckpt) == bool(args.model):
        raise UsageError("generate: give exactly one of --ckpt DIR and --model SOURCE")
    if args.model:
        from .pretrained_cli import generate_pretrained
        return generate_pretrained(args)
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    from .data import decode, encode
    model, tokenizer = _load(args.ckpt)
    if getattr(model.config, "family", "decoder") != "decoder":
        from .encoder_cli import generate_family
        return generate_family(args, model, tokenizer)
    prompt_ids = encode(tokenizer, args.prompt).tolist()
    if not prompt_ids:
        raise UsageError("--prompt is empty")
    context = model.config.block_size
    if len(prompt_ids) > context:
        raise UsageError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of {context}")
    if len(prompt_ids) + args.max_new_tokens > context:
        print(f"(stopping at the context length: {context - len(prompt_ids)} new tokens at most)", file=sys.stderr)
    stop = encode(tokenizer, args.stop).tolist() if args.stop else []
    stream = not args.no_stream and args.num_samples == 1

    def on_token(row, token):
        sys.stdout.write(decode(tokenizer, [token]))
        sys.stdout.flush()

    if stream:
        sys.stdout.write(args.prompt)
    outputs = generate(model, [prompt_ids] * args.num_samples, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stop,
                       use_cache=not args.no_cache, on_token=on_token if stream else None)
    if stream:
        sys.stdout.write("\n")
    else:
        for i, out in enumerate(outputs):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            print(args.prompt + decode(tokenizer, out))
    return 0


def cmd_eval(args):
    from .data import TokenData, encode, read_text
    from .train import evaluate_split
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    model, tokenizer = _load(args.ckpt)
    if getattr(model.config, "family", "decoder") != "decoder":
        from .encoder_cli import eval_family
        return eval_family(args, model, tokenizer)
    ids = encode(tokenizer, read_text(args.data))
    data = TokenData(ids, args.val_fraction)
    split = data.splits[args.split] if args.data is None or args.split != "all" else ids
    loss = evaluate_split(model, split, args.batch_size, progress=not args.no_progress)
    print(json.dumps({"split": args.split, "tokens": int(len(split)), "loss": round(loss, 4),
                      "perplexity": round(math.exp(loss), 4)}))
    return 0


def cmd_quantize(args):
    from .quantize import quantize_checkpoint
    model, (before, after) = quantize_checkpoint(args.ckpt, args.out, args.scheme, overwrite=args.overwrite,
                                                 progress=not args.no_progress)
    print(f"quantized {args.ckpt} to {args.scheme}: model.safetensors {before / 2**20:.2f} MiB -> "
          f"{after / 2**20:.2f} MiB ({before / after:.2f}x smaller); checkpoint in {args.out}")
    return 0


def build_parser():
    from . import __version__
    from .models import preset_names
    parser = argparse.ArgumentParser(prog="minillm", description="A small, readable, fast transformer engine for the CPU.")
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (default: shakespeare-char on the built-in corpus)")
    p.add_argument("--preset", default="shakespeare-char", choices=preset_names(), help="named config (default %(default)s)")
    p.add_argument("--config", help="a JSON file with 'model' and 'train' sections (instead of --preset)")
    p.add_argument("--data", help="UTF-8 text file to train on (default: the built-in tiny Shakespeare)")
    p.add_argument("--out", help="checkpoint directory (default: out/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out")
    for flag, kind in (("--max-iters", int), ("--batch-size", int), ("--lr", float), ("--seed", int),
                       ("--eval-interval", int), ("--eval-iters", int), ("--grad-accum", int),
                       ("--dropout", float), ("--sample-tokens", int), ("--threads", int)):
        p.add_argument(flag, type=kind)
    p.add_argument("--tokenizer", help="char, bpe, unigram, wordpiece (trained on the data) or the path of a "
                   "saved tokenizer / .tiktoken file / vocab.txt (default: the preset's)")
    p.add_argument("--tokenizer-vocab-size", type=int, help="vocabulary size of a trained tokenizer "
                   "(default: the model's vocab_size)")
    p.add_argument("--aux-loss-coef", type=float, help="MoE models: weight of the load-balancing loss (0: off)")
    p.add_argument("--z-loss-coef", type=float, help="MoE models: weight of the router z-loss (0: off)")
    p.add_argument("--plot", action="store_true", help="write a loss-curve PNG, and for MoE models an expert-load "
                   "histogram (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("data parallel (run under mpiexec -n N; see docs/distributed.md)")
    g.add_argument("--distributed", action="store_true", help="use MPI even if no MPI launcher is detected")
    g.add_argument("--zero", action="store_true", help="shard AdamW's moments over the ranks (ZeRO stage 1)")
    g.add_argument("--bucket-mb", type=float, default=4.0, help="gradient bucket size in MiB (default %(default)s)")
    g.add_argument("--no-overlap", action="store_true", help="sum the gradients after backward, not during it")
    g.add_argument("--comm-timeout", type=float, default=600.0, help="seconds a rank waits for the others in one "
                   "collective before every rank is stopped (default %(default)s; 0: forever)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("generate", help="sample text from a checkpoint or a pretrained model")
    p.add_argument("--ckpt", help="checkpoint directory")
    p.add_argument("--model", help="a pretrained model: a .gguf file, a Hugging Face directory or a known name "
                   "(smollm2-135m-instruct); the raw prompt, no chat template")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", help="stop when this token is generated")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence each step (slow; for checking)")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--num-beams", type=int, default=1, help="encoder-decoder checkpoints: beam search with this "
                   "many beams (1: greedy or sampling)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: scores are divided by "
                   "length ** this (> 0 favours longer outputs)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--data", help="UTF-8 text (default: the built-in corpus)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--examples", type=int, default=500, help="encoder-decoder checkpoints of a generated task: "
                   "held-out examples for the exact-match rate (default %(default)s)")
    p.add_argument("--num-beams", type=int, default=1, help="encoder-decoder checkpoints: beams when generating")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a checkpoint's weights to INT8 or INT4")
    p.add_argument("--ckpt", required=True, help="the float checkpoint directory")
    p.add_argument("--scheme", required=True, choices=["int8", "q8_0", "q4_0", "q4_1"],
                   help="int8: per output channel; q8_0: int8 in groups of 32; q4_0 / q4_1: 4-bit in groups of 32 "
                        "(symmetric / with a min)")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_quantize)

    sub.add_parser("demo", help="forward/backward of a tiny transformer block in each flavour, with its gradient check"
                   ).set_defaults(run=cmd_demo)
    p = sub.add_parser("info", help="how the native extension was built; with --model, what a model holds")
    p.add_argument("--model", help="a .gguf file, a Hugging Face or minillm directory, or a known name")
    p.set_defaults(run=cmd_info)
    from .pretrained_cli import add_parsers as add_pretrained_parsers
    add_pretrained_parsers(sub)
    from .encoder_cli import add_parsers as add_encoder_parsers
    add_encoder_parsers(sub)
    from .tokenizers.cli import add_parser as add_tokenizer_parser
    add_tokenizer_parser(sub)
    from .scaling.cli import add_parser as add_scaling_parser
    add_scaling_parser(sub)
    return parser


def main(argv=None):
    from .checkpoint import CheckpointError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (UsageError, CheckpointError, ValueError) as error:
        print(f"minillm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minillm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
