"""The `minillm` command line.

    minillm train      train a model (default: the shakespeare-char preset on the built-in corpus; cli_train.py)
    minillm generate   sample text from a checkpoint, streaming it as it comes
    minillm eval       loss and perplexity of a checkpoint on held-out text
    minillm quantize   INT8 / INT4 copy of a checkpoint (generate and eval run on it as on any other)
    minillm tokenizer  train | encode | decode a BPE, Unigram or WordPiece tokenizer (minillm/tokenizers/cli.py)
    minillm scaling    count | sweep | fit | plan: scaling laws (minillm/scaling/cli.py)
    minillm demo       forward + backward of a tiny transformer block in each flavour, gradient-checked
    minillm info       how the native extension was built (OpenMP, SIMD, threads); with --model, a model's
    minillm chat       talk to a pretrained model (minillm/pretrained_cli.py, as are generate --model and export)
    minillm export     a model as GGUF or a Hugging Face directory
    minillm serve      an OpenAI-compatible HTTP server: continuous batching, paged KV cache (minillm/serve_cli.py)
    minillm embed      sentence embeddings (and their cosine matrix) from an encoder (minillm/encoder_cli.py)
    minillm constitution  Constitutional AI: SFT and preference data from principles (minillm/cli_constitution.py)

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

from .cli_train import DEFAULT_PRESET, RESUME_RULES, add_data_parallel_arguments, cmd_train
from .config import (UsageError, dropout_rate, existing_file, finite_float, nonnegative_float,  # noqa: F401
                     nonnegative_int, open_fraction, output_directory, positive_float, positive_int, probability, seed_int,
                     thread_count)


def block_size_spec(text):
    """--block-size: N tokens, or Nx (times the checkpoint's context, with --resume)."""
    from .context_extension import parse_block_size
    try:
        return parse_block_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int or a factor such as 4x, got {text!r}") from None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _load(path):
    from . import checkpoint as ckpt
    return ckpt.build_model(ckpt.load_checkpoint(path))


def cmd_generate(args):
    from .generate import generate
    if bool(args.ckpt) == bool(args.model):
        raise UsageError("generate: give exactly one of --ckpt DIR and --model SOURCE")
    if (args.best_of is None) != (args.reward_model is None):
        raise UsageError("--best-of N and --reward-model DIR go together")
    if args.best_of:
        from .pretrained_cli import cmd_best_of
        return cmd_best_of(args)
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
    if args.sinks:
        return _generate_with_sinks(args, model, tokenizer, prompt_ids)
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


def _generate_with_sinks(args, model, tokenizer, prompt_ids):
    """generate --sinks N,W: one sample through attention-sink caches, past the context if asked."""
    from .data import decode, encode
    from .streaming import streaming_generate
    try:
        n_sink, window = (int(v) for v in args.sinks.split(","))
    except ValueError:
        raise UsageError(f"--sinks must be two ints N,W (sink tokens, window), got {args.sinks!r}") from None
    out = streaming_generate(model, prompt_ids, args.max_new_tokens, sinks=(n_sink, window),
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    stop = encode(tokenizer, args.stop).tolist() if args.stop else []
    if stop and stop[0] in out:
        out = out[:out.index(stop[0])]
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
    from . import cli_long_context
    if cli_long_context.wanted(args):
        return cli_long_context.run(args, model, tokenizer, split)
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
    p.add_argument("--block-size", type=block_size_spec, help="the context length; with --resume, Nx (or a larger "
                   "N) extends the checkpoint's context: RoPE positions interpolated, a fine-tune at the longer "
                   "length (docs/long_context.md)")
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
    add_data_parallel_arguments(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("generate", help="sample text from a checkpoint or a pretrained model")
    p.add_argument("--ckpt", help="checkpoint directory")
    p.add_argument("--model", help="a pretrained model: a .gguf file, a Hugging Face directory or a known name "
                   "(smollm2-135m-instruct); the raw prompt, no chat template")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=200)
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=probability)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--stop", help="stop when this token is generated")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--best-of", type=positive_int, help="sample N replies and print the one --reward-model scores "
                   "highest (docs/alignment.md)")
    p.add_argument("--reward-model", help="with --best-of: a reward model directory (minillm finetune --method reward)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence each step (slow; for checking)")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--sinks", help="N,W: attention sinks (StreamingLLM): keep the first N tokens and the last W, so "
                   "generation runs past the context at constant memory (RoPE models; docs/long_context.md)")
    p.add_argument("--threads", type=thread_count)
    p.add_argument("--num-beams", type=positive_int, default=1, help="encoder-decoder checkpoints: beam search "
                   "with this many beams (1: greedy or sampling)")
    p.add_argument("--length-penalty", type=finite_float, default=1.0, help="beam search: scores are divided by "
                   "length ** this (> 0 favours longer outputs)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--data", type=existing_file, help="UTF-8 text (default: the built-in corpus)")
    p.add_argument("--val-fraction", type=open_fraction, default=0.1)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=thread_count)
    from .cli_long_context import add_arguments as add_long_context_arguments
    add_long_context_arguments(p)
    p.add_argument("--examples", type=positive_int, default=500, help="encoder-decoder checkpoints of a generated "
                   "task: held-out examples for the exact-match rate (default %(default)s)")
    p.add_argument("--num-beams", type=positive_int, default=1, help="encoder-decoder checkpoints: beams when "
                   "generating")
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
    p = sub.add_parser("info", help="how the native extension was built; with --model, what a model holds")
    p.add_argument("--model", help="a .gguf file, a Hugging Face or minillm directory, or a known name")
    p.set_defaults(run=cmd_info)
    from .cli_finetune import add_parser as add_finetune_parser
    add_finetune_parser(sub)
    from .cli_constitution import add_parser as add_constitution_parser
    add_constitution_parser(sub)
    from .pretrained_cli import add_parsers as add_pretrained_parsers
    add_pretrained_parsers(sub)
    from .encoder_cli import add_parsers as add_encoder_parsers
    add_encoder_parsers(sub)
    from .tokenizers.cli import add_parser as add_tokenizer_parser
    add_tokenizer_parser(sub)
    from .scaling.cli import add_parser as add_scaling_parser
    add_scaling_parser(sub)
    from .serve_cli import add_parser as add_serve_parser
    add_serve_parser(sub)
    return parser


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
