"""`minillm train`: the configs of a run, its output directory, and the rules of --resume.

    minillm train --preset shakespeare-char --out out/run          # a new run
    minillm train --out out/run --resume --max-iters 3000          # continue it (RESUME_RULES)

Before any work: the preset or --config file and the flags become a ModelConfig and a TrainConfig
(each field's kind and range checked), the model must fit in memory, the data must read. Then
rank 0 takes the lock on --out (files.DirectoryLock, held to the end of the run) and checks what is
there against --resume / --overwrite. A resumed run takes its model and recipe from the checkpoint;
flags that contradict it are refused (train_config.resume_conflicts). docs/reliability.md has it all.
"""
import os
import sys

from .config import UsageError

DEFAULT_PRESET = "shakespeare-char"

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


def add_data_parallel_arguments(parser):
    """The flags of a data-parallel run (minillm train, minillm finetune)."""
    from .config import nonnegative_float, positive_float
    g = parser.add_argument_group("data parallel (run under mpiexec -n N; see docs/distributed.md)")
    g.add_argument("--distributed", action="store_true", help="use MPI even if no MPI launcher is detected")
    g.add_argument("--zero", action="store_true", help="shard AdamW's moments over the ranks (ZeRO stage 1)")
    g.add_argument("--bucket-mb", type=positive_float, default=4.0, help="gradient bucket size in MiB (default %(default)s)")
    g.add_argument("--no-overlap", action="store_true", help="sum the gradients after backward, not during it")
    g.add_argument("--comm-timeout", type=nonnegative_float, default=600.0, help="seconds a rank waits for the others in one "
                   "collective before every rank is stopped (default %(default)s; 0: forever)")


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
    spec = getattr(args, "block_size", None)
    if spec is not None and not args.resume:
        if spec[0] != "tokens":
            raise UsageError("--block-size Nx extends a checkpoint's context: it needs --resume (a new run takes "
                             "--block-size N, in tokens)")
        model["block_size"] = spec[1]
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
    from .models import model_config_from_dict
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
    model_config = model_config_from_dict(saved["config"]["model"], f"{where}: model")
    note = (f"(--resume: the run was to {saved_max} steps and now goes to {max_iters}, from step {state['step']})"
            if max_iters != saved_max else None)
    if getattr(args, "block_size", None):
        from dataclasses import replace
        from .context_extension import extended_model
        try:
            changes = extended_model(model_config, args.block_size)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if changes["block_size"] != model_config.block_size:
            extended = (f"context {model_config.block_size} -> {changes['block_size']}" +
                        (f", RoPE positions interpolated (rope_scaling {changes['rope_scaling']})"
                         if changes["rope_scaling"] != model_config.rope_scaling else ""))
            note = f"{note}\n(--block-size: {extended})" if note else f"(--block-size: {extended})"
        model_config = replace(model_config, **changes)
    return model_config, train_config, overrides, note


def _stand_in_vocab(model_spec):
    """A vocabulary size for checking a config whose vocab_size the tokenizer decides later: just
    large enough for the special token ids it names (a seq2seq model's pad, eos, start)."""
    ids = [model_spec.get(k) for k in ("pad_token_id", "eos_token_id", "decoder_start_token_id")]
    return 1 + max([i for i in ids if isinstance(i, int) and not isinstance(i, bool)] + [1])


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
    from .data import read_text
    from .families import build_tokenizer
    from .models import model_config_from_dict
    from .train_config import check_model_fits
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if not args.resume:
        where, model_spec, train_config = _configs(args)        # bad settings: an error before any write
        check_model_fits(model_config_from_dict({**model_spec, "vocab_size": model_spec.get("vocab_size")
                                                 or _stand_in_vocab(model_spec)}, f"{where}: model"))
        text = read_text(args.data)
    lock.acquire()
    _check_out(args, out)
    if args.resume:
        return _resume_configs(args, out)
    if model_spec.get("vocab_size") is None:       # the tokenizer decides
        model_spec["vocab_size"] = build_tokenizer(model_spec, train_config, text).vocab_size
    return model_config_from_dict(model_spec, f"{where}: model"), train_config, None, None


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

    changes = ({"block_size": model_config.block_size, "rope_scaling": model_config.rope_scaling}
               if args.resume and getattr(args, "block_size", None) else None)

    def train():
        trainer = Trainer(model_config, train_config, out, args.data, resume=args.resume,
                          progress=not args.no_progress, log=lambda msg: print(msg, file=sys.stderr),
                          comm=comm, parallel=parallel, resume_overrides=overrides, model_changes=changes)
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
