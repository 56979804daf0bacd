"""The `minillm` command line.

    minillm train      train a model (default: the shakespeare-char preset on the built-in corpus)
    minillm generate   sample text from a checkpoint, streaming it as it comes
    minillm eval       loss and perplexity of a checkpoint on held-out text
    minillm quantize   INT8 / INT4 copy of a checkpoint (generate and eval run on it as on any other)
    minillm tokenizer  train | encode | decode a BPE, Unigram or WordPiece tokenizer (minillm/tokenizers/cli.py)
    minillm scaling    count | sweep | fit | plan: scaling laws (minillm/scaling/cli.py)
    minillm demo       forward + backward of a tiny transformer block in each flavour, gradient-checked
    minillm info       how the native extension was built (OpenMP, SIMD, threads)

Bad input (a flag of the wrong type or out of range, a missing or corrupt checkpoint, data that is
empty or not UTF-8, a prompt longer than the context, an output directory another run is writing,
...) prints one line naming the problem and exits with code 2, before anything is written. A
diverged training run exits with code 1. Anything else is a bug: one line saying so, exit code 1
(MINILLM_TRACEBACK=1 prints the traceback instead).
"""
import argparse
import json
import math
import os
import sys

from .config import (dropout_rate, existing_file, nonnegative_float, nonnegative_int, open_fraction, output_directory,
                     positive_float, positive_int, probability, seed_int, thread_count)


class UsageError(ValueError):
    """Bad input from the command line: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_demo(args):
    from .demo import main
    return main()


def cmd_info(args):
    from . import build_info
    print(json.dumps(build_info(), indent=2))
    return 0


def _spec(args):
    """(where, the model section, the train section) of --config or --preset, their kinds checked."""
    from .config import check_fields, read_config
    from .models import load_preset
    if args.config:
        where, spec = f"config file {args.config!r}", read_config(args.config)
    else:
        where, spec = f"preset {args.preset or DEFAULT_PRESET!r}", load_preset(args.preset or DEFAULT_PRESET)
    check_fields(spec, {"model": dict, "train": dict, "description": str}, where)
    return where, dict(spec.get("model", {})), dict(spec.get("train", {}))


def _flags(args):
    """The model and train settings the command line sets (None: not given)."""
    train = {"max_iters": args.max_iters, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "eval_interval": args.eval_interval, "eval_iters": args.eval_iters, "grad_accum": args.grad_accum,
             "sample_tokens": args.sample_tokens, "tokenizer": args.tokenizer,
             "tokenizer_vocab_size": args.tokenizer_vocab_size, "lr_decay_iters": args.lr_decay_iters}
    model = {"dropout": args.dropout, "aux_loss_coef": args.aux_loss_coef, "z_loss_coef": args.z_loss_coef}
    return ({k: v for k, v in model.items() if v is not None}, {k: v for k, v in train.items() if v is not None})


def _configs(args):
    """The model spec and training config of a new run: a preset or a config file, then the flags.
    --max-iters moves the end of the cosine decay with it when the decay ended at the run's end."""
    from .config import check_fields, config_from_dict, field_kinds
    from .train import TrainConfig
    where, model, train = _spec(args)
    check_fields(train, field_kinds(TrainConfig), f"{where}: train")
    flag_model, flag_train = _flags(args)
    if "max_iters" in flag_train and "lr_decay_iters" not in flag_train and train.get("lr_decay_iters") is not None:
        follows = train["lr_decay_iters"] == train.get("max_iters", TrainConfig.max_iters)
        train["lr_decay_iters"] = (flag_train["max_iters"] if follows
                                   else min(train["lr_decay_iters"], flag_train["max_iters"]) or None)
    model.update(flag_model)
    train.update(flag_train)
    return where, model, config_from_dict(TrainConfig, train, f"{where}: train")


def _resume_configs(args, out):
    """The model config, training config and resume overrides of --resume: the checkpoint's, with
    what may change (train_config.RESUMABLE); a flag or config key that contradicts it is refused."""
    from . import checkpoint as ckpt
    from .config import config_from_dict
    from .models import ModelConfig
    from .train_config import RESUMABLE, TrainConfig, resume_conflicts, resume_config
    saved = ckpt.read_checkpoint_meta(out)
    state = saved["state"]
    if not isinstance(state.get("train_config"), dict) or not isinstance(state.get("step"), int):
        raise UsageError(f"--resume: the checkpoint in {out!r} is not a training checkpoint (its state.json has no "
                         "train_config and step)")
    explicit = bool(args.config or args.preset)
    where, model, train = _spec(args) if explicit else ("", {}, {})
    flag_model, flag_train = _flags(args)
    for source, given_model, given_train in (("flags", flag_model, flag_train), ("file", model, train)):
        for section, key, value, had in resume_conflicts(saved["config"]["model"], state["train_config"],
                                                         given_model, given_train):
            what = f"--{key.replace('_', '-')} {value}" if source == "flags" else f"{where} sets {section}.{key} {value!r}"
            raise UsageError(f"--resume continues the checkpoint's run, whose {key} is {had!r}, but {what}; drop it, "
                             "or start a new run (--overwrite, or another --out)")
    saved_max = state["train_config"].get("max_iters")
    max_iters = flag_train.get("max_iters", train.get("max_iters", saved_max))
    overrides = {k: v for k, v in {**{k: train[k] for k in ("eval_interval", "eval_iters", "sample_tokens", "max_loss")
                                      if k in train}, **flag_train}.items() if k in RESUMABLE and k != "max_iters"}
    values = resume_config(state["train_config"], max_iters, overrides)
    where = f"checkpoint state file {os.path.join(saved['directory'], 'state.json')!r}"
    train_config = config_from_dict(TrainConfig, values, f"{where}: train_config")
    model_config = config_from_dict(ModelConfig, saved["config"]["model"], f"{where}: model")
    note = (f"(--resume: the run was to {saved_max} steps and now goes to {max_iters}, from step {state['step']})"
            if max_iters != saved_max else None)
    return model_config, train_config, overrides, note


def _check_out(args, out):
    """--out against --resume and --overwrite, and --overwrite's clearing; under the lock."""
    from . import checkpoint as ckpt
    has_checkpoint = ckpt.has_checkpoint(out)
    leftovers = ckpt.checkpoint_leftovers(out)
    if args.resume and not has_checkpoint:
        found = f" (only {', '.join(leftovers[:3])}: a checkpoint that was never committed)" if leftovers else ""
        raise UsageError(f"--resume: no checkpoint in {out!r}{found}")
    if leftovers and not (args.resume or args.overwrite):
        if has_checkpoint:
            raise UsageError(f"{out!r} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                             "start over, or --out for another directory")
        raise UsageError(f"{out!r} holds checkpoint files ({', '.join(leftovers[:3])}) but no complete checkpoint: "
                         "pass --overwrite to replace them, or --out for another directory")
    if args.overwrite:
        ckpt.discard_checkpoint(out)
        if os.path.exists(os.path.join(out, "train_log.jsonl")):
            os.remove(os.path.join(out, "train_log.jsonl"))


def _prepare_train(args, out, lock):
    """The run's model config, training config and resume overrides, after taking the lock on --out
    and checking it against --resume / --overwrite. Under MPI only rank 0 runs this."""
    from .config import config_from_dict
    from .data import build_tokenizer, read_text
    from .models import ModelConfig
    from .train_config import check_model_fits
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if not args.resume:
        where, model_spec, train_config = _configs(args)        # bad settings: an error before any write
        check_model_fits(config_from_dict(ModelConfig, {**model_spec, "vocab_size": model_spec.get("vocab_size") or 1},
                                          f"{where}: model"))
        text = read_text(args.data)
    lock.acquire()
    _check_out(args, out)
    if args.resume:
        return _resume_configs(args, out)
    if model_spec.get("vocab_size") is None:       # the tokenizer decides
        model_spec["vocab_size"] = build_tokenizer(train_config.tokenizer, text,
                                                   train_config.tokenizer_vocab_size).vocab_size
    return config_from_dict(ModelConfig, model_spec, f"{where}: model"), train_config, None, None


DEFAULT_PRESET = "shakespeare-char"


def cmd_train(args):
    from . import distributed
    from .files import DirectoryLock
    try:       # `mpiexec -n N minillm train` (or --distributed): one rank of N; else this process alone
        comm = distributed.from_environment(args.distributed, args.comm_timeout)
    except RuntimeError as error:
        raise UsageError(str(error)) from None
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    out = args.out or os.path.join("out", args.preset or DEFAULT_PRESET if not args.config else
                                   os.path.splitext(os.path.basename(args.config))[0])
    lock = DirectoryLock(out)        # rank 0 alone takes it, and holds it to the end of the run
    try:
        return _train(args, comm, out, lock)
    finally:
        lock.release()


def _train(args, comm, out, lock):
    from . import distributed
    from .plots import plot_expert_load, plot_losses
    from .train import Trainer, TrainingDiverged
    root = comm.rank == 0
    parallel = distributed.ParallelConfig(zero=args.zero, bucket_mb=args.bucket_mb, overlap=not args.no_overlap)
    try:
        model_config, train_config, overrides, note = comm.run_on_root(lambda: _prepare_train(args, out, lock))
    except distributed.RootFailed:
        return 0                                  # rank 0 reports the problem

    def train():
        trainer = Trainer(model_config, train_config, out, args.data, resume=args.resume,
                          progress=not args.no_progress, log=lambda msg: print(msg, file=sys.stderr),
                          comm=comm, parallel=parallel, resume_overrides=overrides)
        if root:
            _describe(trainer, comm)
            if note:
                print(note, file=sys.stderr)
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
    if not result["step_losses"] and args.resume:
        print(f"done: the checkpoint in {out} is at step {result['step']} already, which --max-iters "
              f"{trainer.config.max_iters} does not pass; nothing trained")
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
    n, c, model_config = trainer.model.num_parameters(), trainer.config, trainer.model.config
    print(f"model: {n / 1e6:.2f}M parameters ({trainer.model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M "
          f"without embeddings), vocab {model_config.vocab_size}, context {model_config.block_size}; "
          f"{len(trainer.data.splits['train']):,} train / {len(trainer.data.splits['val']):,} val tokens",
          file=sys.stderr)
    if comm.size > 1:
        rows = c.batch_size * c.grad_accum
        print(f"data parallel: {comm.size} ranks share each batch of {rows} rows"
              + (", AdamW moments sharded (ZeRO-1)" if trainer.dp.config.zero else ""), file=sys.stderr)


def _load(path):
    from . import checkpoint as ckpt
    return ckpt.build_model(ckpt.load_checkpoint(path))


def cmd_generate(args):
    from .generate import generate
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    from .data import decode, encode
    model, tokenizer = _load(args.ckpt)
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
    parser = Parser(prog="minillm", description="A small, readable, fast transformer engine for the CPU.")
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (default: shakespeare-char on the built-in corpus)",
                       epilog=RESUME_RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=preset_names(), help=f"named config (default {DEFAULT_PRESET})")
    p.add_argument("--config", type=existing_file, help="a JSON file with 'model' and 'train' sections (instead of --preset)")
    p.add_argument("--data", type=existing_file, help="UTF-8 text file to train on (default: the built-in tiny Shakespeare)")
    p.add_argument("--out", type=output_directory, help="checkpoint directory (default: out/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly where it stopped "
                   "(the rules are below)")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out")
    for flag, kind in (("--max-iters", nonnegative_int), ("--batch-size", positive_int), ("--lr", positive_float),
                       ("--seed", seed_int), ("--eval-interval", positive_int), ("--eval-iters", nonnegative_int),
                       ("--grad-accum", positive_int), ("--dropout", dropout_rate), ("--sample-tokens", nonnegative_int),
                       ("--threads", thread_count)):
        p.add_argument(flag, type=kind)
    p.add_argument("--lr-decay-iters", type=positive_int, help="the step where the cosine schedule reaches min_lr "
                   "(default: the config's, which --max-iters moves when it was the run's end)")
    p.add_argument("--tokenizer", help="char, bpe, unigram, wordpiece (trained on the data) or the path of a "
                   "saved tokenizer / .tiktoken file / vocab.txt (default: the preset's)")
    p.add_argument("--tokenizer-vocab-size", type=positive_int, help="vocabulary size of a trained tokenizer "
                   "(default: the model's vocab_size)")
    p.add_argument("--aux-loss-coef", type=nonnegative_float, help="MoE models: weight of the load-balancing loss (0: off)")
    p.add_argument("--z-loss-coef", type=nonnegative_float, help="MoE models: weight of the router z-loss (0: off)")
    p.add_argument("--plot", action="store_true", help="write a loss-curve PNG, and for MoE models an expert-load "
                   "histogram (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("data parallel (run under mpiexec -n N; see docs/distributed.md)")
    g.add_argument("--distributed", action="store_true", help="use MPI even if no MPI launcher is detected")
    g.add_argument("--zero", action="store_true", help="shard AdamW's moments over the ranks (ZeRO stage 1)")
    g.add_argument("--bucket-mb", type=positive_float, default=4.0, help="gradient bucket size in MiB (default %(default)s)")
    g.add_argument("--no-overlap", action="store_true", help="sum the gradients after backward, not during it")
    g.add_argument("--comm-timeout", type=nonnegative_float, default=600.0, help="seconds a rank waits for the others in one "
                   "collective before every rank is stopped (default %(default)s; 0: forever)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=200)
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=probability)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--stop", help="stop when this token is generated")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence each step (slow; for checking)")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--threads", type=thread_count)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--data", type=existing_file, help="UTF-8 text (default: the built-in corpus)")
    p.add_argument("--val-fraction", type=open_fraction, default=0.1)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=thread_count)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a checkpoint's weights to INT8 or INT4")
    p.add_argument("--ckpt", required=True, help="the float checkpoint directory")
    p.add_argument("--scheme", required=True, choices=["int8", "q8_0", "q4_0", "q4_1"],
                   help="int8: per output channel; q8_0: int8 in groups of 32; q4_0 / q4_1: 4-bit in groups of 32 "
                        "(symmetric / with a min)")
    p.add_argument("--out", required=True, type=output_directory, help="directory for the quantized checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_quantize)

    sub.add_parser("demo", help="forward/backward of a tiny transformer block in each flavour, with its gradient check"
                   ).set_defaults(run=cmd_demo)
    sub.add_parser("info", help="how the native extension was built").set_defaults(run=cmd_info)
    from .tokenizers.cli import add_parser as add_tokenizer_parser
    add_tokenizer_parser(sub)
    from .scaling.cli import add_parser as add_scaling_parser
    add_scaling_parser(sub)
    return parser


RESUME_RULES = """resuming (--resume):
  The model and the training recipe come from the checkpoint in --out; the run continues from its
  step bit for bit. A flag or a --config/--preset setting that differs from the checkpoint's
  (the model, --batch-size, --lr, --seed, --grad-accum, --tokenizer, ...) is refused; equal ones are
  fine, so the first command line plus --resume works. What may change: --max-iters (or the
  config's max_iters; default the checkpoint's), --lr-decay-iters, --eval-interval, --eval-iters,
  --sample-tokens, and flags outside the recipe (--threads, --plot, data-parallel flags).
  The schedule: if the cosine decay ended at the run's end, a new --max-iters moves it to the new
  end (the rest of the run gets the learning rates of a run planned that long); a decay that ended
  elsewhere stays, unless --lr-decay-iters says otherwise. train_log.jsonl is cut back to the
  checkpoint's step, so no step is logged twice. See docs/reliability.md."""


def _report_unexpected(error):
    """An exception no check anticipated: a bug. One line, exit code 1 (a traceback on request)."""
    if os.environ.get("MINILLM_TRACEBACK"):
        raise error
    first = str(error).splitlines()[0][:300] if str(error) else ""
    print(f"minillm: internal error: {type(error).__name__}: {first} (this is a bug in minillm; "
          "MINILLM_TRACEBACK=1 shows where)", file=sys.stderr)
    return 1


def main(argv=None):
    from .checkpoint import CheckpointError
    from .files import DirectoryBusy
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:                 # --help, --version, or a bad flag (already reported)
        return exit_.code if isinstance(exit_.code, int) else 2
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (UsageError, CheckpointError, ValueError, DirectoryBusy) as error:
        print(f"minillm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:                    # a path that cannot be read or written
        where = f" {error.filename!r}" if error.filename else ""
        print(f"minillm: error:{where} {error.strerror or error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("minillm: error: out of memory (a smaller --batch-size, model or --num-samples needs less)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minillm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:                  # noqa: BLE001 (the last resort: no traceback for users)
        return _report_unexpected(error)


if __name__ == "__main__":
    sys.exit(main())
