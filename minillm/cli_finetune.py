"""`minillm finetune`: supervised fine-tuning (full, LoRA, QLoRA) of a pretrained model or a minillm
checkpoint on a JSONL file of chats or prompt/completion pairs (minillm/finetune.py, sft_data.py);
with --method reward or dpo, a reward model or DPO on preference pairs (LoRA, or every weight with
--full; minillm/alignment/, docs/alignment.md); with --method ppo or grpo, RL against a reward model
on a file of prompts (minillm/alignment/cli_rl.py, docs/rlhf.md).

The data are read and checked before --out is touched: a bad record stops the run with one line
naming the file and line (exit 2), and nothing is written. --out follows `minillm train`'s rules: a
directory that holds a checkpoint needs --resume (continue it, bit-exactly) or --overwrite.
Under `mpiexec -n N` every rank trains on its shard of each batch (docs/distributed.md); rank 0
checks the flags, reads the data first and alone writes.
"""
import os
import sys

from .config import (UsageError, dropout_rate, existing_file, nonnegative_float, number, open_fraction,
                     output_directory, positive_float, positive_int, seed_int, thread_count)

PREFERENCE = ("reward", "dpo")
label_smoothing = number(0.0, 0.5, high_open=True, name="label_smoothing")      # [0, 0.5)


def _check_preference_flags(args):
    """The flags that go with --method reward / dpo only, or not with them."""
    alone = {"--full": args.full, "--beta": args.beta is not None, "--loss": args.loss is not None,
             "--label-smoothing": args.label_smoothing is not None, "--margin": args.margin is not None}
    owner = {"--full": PREFERENCE, "--beta": ("dpo",), "--loss": ("dpo",), "--label-smoothing": ("dpo",),
             "--margin": ("reward",)}
    for flag, given in alone.items():
        if given and args.method not in owner[flag]:
            raise UsageError(f"{flag} goes with --method {' or '.join(owner[flag])}")
    if args.method in PREFERENCE and args.pack:
        raise UsageError(f"--pack is for SFT examples; --method {args.method} trains on pairs of rows")
    if args.method == "reward" and args.merge:
        raise UsageError("--merge: a reward model is always saved with its adapters merged (reward_model/)")
    if args.label_smoothing and (args.loss or "sigmoid") != "sigmoid":
        raise UsageError("--label-smoothing goes with --loss sigmoid")


def cmd_finetune(args):
    from . import distributed
    from .alignment.cli_rl import RL_METHODS, check_rl_flags, cmd_rl
    try:       # `mpiexec -n N minillm finetune` (or --distributed): one rank of N; else this process alone
        comm = distributed.from_environment(args.distributed, args.comm_timeout)
    except RuntimeError as error:
        raise UsageError(str(error)) from None
    check_rl_flags(args)
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    if args.method in RL_METHODS:
        if comm.size > 1:
            raise UsageError(f"--method {args.method} runs in one process: data-parallel RL is not built yet "
                             "(run it without mpiexec)")
        return cmd_rl(args)
    try:
        return _finetune(args, comm)
    except distributed.RootFailed:
        return 0                                          # rank 0 reports the problem


def _finetune_config(args):
    """The run's FinetuneConfig from the flags, after checking them and --out against --resume."""
    from . import checkpoint as ckpt
    from .finetune import FinetuneConfig
    from .nn.lora_config import KNOWN
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    for name in (args.target_modules or "").split(","):
        if name.strip() and name.strip() not in KNOWN:
            raise UsageError(f"--target-modules: {name.strip()!r} is not one of {', '.join(KNOWN)}")
    if args.method != "qlora" and args.scheme:
        raise UsageError("--scheme is the frozen base's quantization: it goes with --method qlora")
    _check_preference_flags(args)
    method = ("full" if args.full else "lora") if args.method in PREFERENCE else args.method
    fields = dict(
        method=method, lora_r=args.lora_r, lora_alpha=args.lora_alpha if args.lora_alpha else 2.0 * args.lora_r,
        lora_dropout=args.lora_dropout, target_modules=args.target_modules, use_rslora=args.rslora,
        scheme=args.scheme or "nf4", lr=args.lr or (2e-5 if method == "full" else 2e-4),
        warmup_iters=args.warmup_iters, max_iters=args.max_iters, batch_size=args.batch_size,
        eval_interval=args.eval_interval or args.max_iters, eval_fraction=args.eval_fraction,
        weight_decay=args.weight_decay, pack=args.pack, seed=args.seed)
    if args.method in PREFERENCE:
        from .alignment.train import PreferenceConfig
        config = PreferenceConfig(**fields, objective=args.method, beta=args.beta or 0.1, loss_type=args.loss or "sigmoid",
                                  label_smoothing=args.label_smoothing or 0.0, margin=args.margin or 0.0)
    else:
        config = FinetuneConfig(**fields)
    out = args.out
    if os.path.isdir(out) and ckpt.has_checkpoint(out) and not (args.resume or args.overwrite):
        raise UsageError(f"{out!r} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                         "start over, or --out for another directory")
    if args.resume and not ckpt.has_checkpoint(out):
        raise UsageError(f"--resume: no checkpoint in {out!r}")
    return config


def _runner(method):
    """The trainer class of a --method: Finetuner (SFT), or minillm/alignment's for preference pairs."""
    if method == "reward":
        from .alignment.reward_train import RewardTrainer
        return RewardTrainer
    if method == "dpo":
        from .alignment.dpo import DPOTrainer
        return DPOTrainer
    from .finetune import Finetuner
    return Finetuner


def _claim_out(args, out):
    from .cli_train import _check_out
    from .files import DirectoryLock
    os.makedirs(out, exist_ok=True)
    with DirectoryLock(out):
        _check_out(args, out)


def _finetune(args, comm):
    """Rank 0 checks the flags and --out and builds its run first (the data are read and checked
    before --out is touched; its errors are one line, exit 2); then the other ranks build theirs
    and every rank trains. Under MPI only rank 0 prints and writes."""
    from . import distributed
    from .train import TrainingDiverged
    root, out = comm.rank == 0, args.out
    if comm.size > 1 and args.method in PREFERENCE:
        raise UsageError(f"--method {args.method} runs in one process: data-parallel preference training is not "
                         "built yet (run it without mpiexec)")
    config = comm.run_on_root(lambda: _finetune_config(args))
    parallel = distributed.ParallelConfig(zero=args.zero, bucket_mb=args.bucket_mb, overlap=not args.no_overlap)
    Runner = _runner(args.method)

    def build():
        return Runner(args.model, args.data, out, config, resume=args.resume, progress=not args.no_progress,
                      merge=args.merge, comm=comm, parallel=parallel)
    run = comm.root_first(build if root else lambda: distributed.stop_all_on_error(comm, build))
    comm.run_on_root(lambda: _claim_out(args, out))
    if root:
        trainable = sum(p.size for _, p in run.optimizer.named_parameters())
        what = "pairs" if args.method in PREFERENCE else "examples"
        label = f"{args.method} ({config.method})" if args.method in PREFERENCE else config.method
        print(f"finetune {label}: {run.model.num_parameters():,} parameters, {trainable:,} trained; "
              f"{len(run.train_examples)} train / {len(run.eval_examples)} eval {what}")
        if comm.size > 1:
            rows = min(run.config.batch_size, len(run.rows if run.config.pack else run.train_examples))
            print(f"data parallel: {comm.size} ranks share each batch of {rows} "
                  f"{'packed rows' if run.config.pack else 'examples'}"
                  + (", AdamW moments sharded (ZeRO-1)" if parallel.zero else ""), file=sys.stderr)
    try:
        result = distributed.stop_all_on_error(comm, run.run, passes=(TrainingDiverged, distributed.RootFailed))
    except TrainingDiverged as error:
        if root:
            print(f"minillm: error: {error}", file=sys.stderr)
        return 1 if root else 0
    if not root:
        return 0
    use = (f"minillm generate --best-of N --reward-model {out}" if args.method == "reward" else
           f"minillm chat --model {out}")
    print(f"done: step {result['step']} in {result['seconds']:.1f} s, peak memory {result['peak_memory_mib']:.0f} MiB; "
          f"use it with: {use}")
    if comm.size > 1:
        print(f"rank 0 of {comm.size}: optimizer state {result['optimizer_state_mib']:.3f} MiB")
    if args.plot:
        from .plots import plot_losses
        print(f"wrote {plot_losses(out)}")
    return 0


def add_parser(sub):
    p = sub.add_parser("finetune", help="supervised fine-tuning (full, LoRA or QLoRA) on a JSONL file of chats "
                                        "or prompt/completion records; a reward model or DPO on preference pairs")
    p.add_argument("--model", required=True, help="the base: a known name, an HF directory, a .gguf file or a "
                                                  "minillm checkpoint")
    p.add_argument("--data", required=True, type=existing_file, help="JSONL: {\"messages\": [...]} or "
                                                                     "{\"prompt\": ..., \"completion\": ...} per line "
                                                                     "(reward, dpo: {\"prompt\", \"chosen\", "
                                                                     "\"rejected\"}; ppo, grpo: {\"prompt\": ...})")
    p.add_argument("--out", required=True, type=output_directory, help="run directory (checkpoints, log, adapter/)")
    p.add_argument("--method", choices=["full", "lora", "qlora", "reward", "dpo", "ppo", "grpo"], default="lora",
                   help="SFT: full, lora or qlora; on preference pairs: reward (a reward model) or dpo; RL against "
                        "--reward-model: ppo or grpo (docs/alignment.md, docs/rlhf.md)")
    p.add_argument("--full", action="store_true", help="reward, dpo, ppo, grpo: train every weight (default: LoRA "
                                                       "adapters)")
    p.add_argument("--beta", type=positive_float, help="dpo: the pull towards the reference (default 0.1)")
    p.add_argument("--loss", choices=["sigmoid", "ipo", "hinge"], help="dpo: the loss (default sigmoid)")
    p.add_argument("--label-smoothing", type=label_smoothing, help="dpo sigmoid: share of flipped labels, [0, 0.5)")
    p.add_argument("--margin", type=nonnegative_float, help="reward: r_chosen must beat r_rejected by this (default 0)")
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
    from .cli_train import add_data_parallel_arguments
    add_data_parallel_arguments(p)
    from .alignment.cli_rl import add_rl_arguments
    add_rl_arguments(p)
    p.set_defaults(run=cmd_finetune)
