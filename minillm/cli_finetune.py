"""`minillm finetune`: supervised fine-tuning (full, LoRA, QLoRA) of a pretrained model or a minillm
checkpoint on a JSONL file of chats or prompt/completion pairs (minillm/finetune.py, sft_data.py).

The data are read and checked before --out is touched: a bad record stops the run with one line
naming the file and line (exit 2), and nothing is written. --out follows `minillm train`'s rules: a
directory that holds a checkpoint needs --resume (continue it, bit-exactly) or --overwrite.
"""
import os

from .config import (UsageError, dropout_rate, existing_file, nonnegative_float, open_fraction, output_directory,
                     positive_float, positive_int, seed_int, thread_count)


def cmd_finetune(args):
    from . import checkpoint as ckpt
    from .alignment.cli_rl import RL_METHODS, check_rl_flags, cmd_rl
    from .cli_train import _check_out
    from .files import DirectoryLock
    from .finetune import FinetuneConfig, Finetuner
    from .nn.lora_config import KNOWN
    check_rl_flags(args)
    if args.method in RL_METHODS:
        return cmd_rl(args)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    for name in (args.target_modules or "").split(","):
        if name.strip() and name.strip() not in KNOWN:
            raise UsageError(f"--target-modules: {name.strip()!r} is not one of {', '.join(KNOWN)}")
    if args.method != "qlora" and args.scheme:
        raise UsageError("--scheme is the frozen base's quantization: it goes with --method qlora")
    config = FinetuneConfig(
        method=args.method, lora_r=args.lora_r, lora_alpha=args.lora_alpha if args.lora_alpha else 2.0 * args.lora_r,
        lora_dropout=args.lora_dropout, target_modules=args.target_modules, use_rslora=args.rslora,
        scheme=args.scheme or "nf4", lr=args.lr or (2e-5 if args.method == "full" else 2e-4),
        warmup_iters=args.warmup_iters, max_iters=args.max_iters, batch_size=args.batch_size,
        eval_interval=args.eval_interval or args.max_iters, eval_fraction=args.eval_fraction,
        weight_decay=args.weight_decay, pack=args.pack, seed=args.seed)
    out = args.out
    if os.path.isdir(out) and ckpt.has_checkpoint(out) and not (args.resume or args.overwrite):
        raise UsageError(f"{out!r} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                         "start over, or --out for another directory")
    if args.resume and not ckpt.has_checkpoint(out):
        raise UsageError(f"--resume: no checkpoint in {out!r}")
    run = Finetuner(args.model, args.data, out, config, resume=args.resume, progress=not args.no_progress,
                    merge=args.merge)                          # loads and checks the data: nothing written yet
    os.makedirs(out, exist_ok=True)
    with DirectoryLock(out):
        _check_out(args, out)
    trainable = sum(p.size for _, p in run.optimizer.named_parameters())
    print(f"finetune {config.method}: {run.model.num_parameters():,} parameters, {trainable:,} trained; "
          f"{len(run.train_examples)} train / {len(run.eval_examples)} eval examples")
    result = run.run()
    print(f"done: step {result['step']} in {result['seconds']:.1f} s, peak memory {result['peak_memory_mib']:.0f} MiB; "
          f"load it with: minillm chat --model {out}")
    if args.plot:
        from .plots import plot_losses
        print(f"wrote {plot_losses(out)}")
    return 0


def add_parser(sub):
    p = sub.add_parser("finetune", help="supervised fine-tuning (full, LoRA or QLoRA) on a JSONL file of chats "
                                        "or prompt/completion records")
    p.add_argument("--model", required=True, help="the base: a known name, an HF directory, a .gguf file or a "
                                                  "minillm checkpoint")
    p.add_argument("--data", required=True, type=existing_file, help="JSONL: {\"messages\": [...]} or "
                                                                     "{\"prompt\": ..., \"completion\": ...} per line "
                                                                     "(ppo/grpo: {\"prompt\": ...} per line)")
    p.add_argument("--out", required=True, type=output_directory, help="run directory (checkpoints, log, adapter/)")
    p.add_argument("--method", choices=["full", "lora", "qlora", "ppo", "grpo"], default="lora",
                   help="full / lora / qlora: supervised; ppo / grpo: RL against --reward-model (docs/rlhf.md)")
    p.add_argument("--lora-r", type=positive_int, default=8, help="adapter rank (default %(default)s)")
    p.add_argument("--lora-alpha", type=positive_float, help="adapter scale numerator (default 2 r)")
    p.add_argument("--lora-dropout", type=dropout_rate, default=0.0)
    p.add_argument("--target-modules", help="comma-separated: q_proj,v_proj (default), all-linear, c_attn, ...")
    p.add_argument("--rslora", action="store_true", help="scale alpha / sqrt(r) (rank-stabilised LoRA)")
    p.add_argument("--scheme", choices=["nf4", "q8_0", "q4_0", "q4_1"], help="qlora: the frozen base's "
                                                                            "quantization (default nf4)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 2e-4; 2e-5 for full)")
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--max-iters", type=positive_int, default=100)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--eval-interval", type=positive_int, help="steps between evaluations and checkpoints "
                                                              "(default: once, at the end)")
    p.add_argument("--eval-fraction", type=open_fraction, default=0.1, help="held-out share of the records")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    p.add_argument("--pack", action="store_true", help="pack several examples per row (no cross-example attention)")
    p.add_argument("--merge", action="store_true", help="also write merged/, the base with the adapter folded in")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--plot", action="store_true", help="write loss.png (needs matplotlib)")
    p.add_argument("--threads", type=thread_count)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .alignment.cli_rl import add_rl_arguments
    add_rl_arguments(p)
    p.set_defaults(run=cmd_finetune)
