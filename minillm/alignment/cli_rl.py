"""`minillm finetune --method ppo|grpo`: RL fine-tuning against a reward model (minillm/alignment/ppo.py).

    minillm finetune --method ppo --model sft-out/ --data prompts.jsonl --reward-model rm-out/ --out ppo-out/
    minillm finetune --method grpo --model sft-out/ --data prompts.jsonl --reward-model rm-out/ \
        --rollouts 16 --group-size 4 --out grpo-out/

--data is a JSONL file of prompts ({"prompt": ...} or {"messages": [...]} per line, alignment/prompts.py),
checked before --out is touched; --tuning chooses what is trained (LoRA adapters by default, or QLoRA,
or every weight). The flags below are added to `minillm finetune`'s parser; they mean nothing to the
supervised methods, which refuse the ones they would silently ignore.
"""
from ..config import UsageError, integer, nonnegative_float, number, positive_float, positive_int

RL_METHODS = ("ppo", "grpo")
unit_interval = number(0.0, 1.0, name="unit_interval")                        # [0, 1]
RL_FLAGS = ("reward_model", "kl_coef", "target_kl", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value",
            "vf_coef", "ent_coef", "ppo_epochs", "minibatches", "rollouts", "group_size", "max_new_tokens",
            "temperature", "top_k", "stop", "missing_stop_penalty", "tuning")


def add_rl_arguments(p):
    g = p.add_argument_group("RL fine-tuning (--method ppo or grpo)")
    g.add_argument("--reward-model", metavar="DIR", help="ppo/grpo: the reward model that scores prompt + answer "
                                                         "(a `minillm finetune --method reward` output)")
    g.add_argument("--tuning", choices=["lora", "qlora", "full"], help="ppo/grpo: what is trained (default lora; "
                                                                       "full, or --full, keeps a frozen copy as "
                                                                       "the reference)")
    g.add_argument("--rollouts", type=positive_int, help="answers sampled per step (default 8)")
    g.add_argument("--group-size", type=integer(2, name="group_size"), help="grpo: answers per prompt (default 4; "
                                                                            "--rollouts must be a multiple)")
    g.add_argument("--max-new-tokens", type=positive_int, help="longest answer (default 32)")
    g.add_argument("--temperature", type=positive_float, help="sampling temperature (default 1)")
    g.add_argument("--top-k", type=positive_int, help="sample from the k most likely tokens (default: all)")
    g.add_argument("--stop", help="a one-token text that also ends an answer (default: EOS / end of turn only)")
    g.add_argument("--missing-stop-penalty", type=nonnegative_float, help="taken off the score of an answer that "
                                                                          "never stopped (default: none)")
    g.add_argument("--kl-coef", type=nonnegative_float, help="beta, the KL penalty's coefficient (default 0.05; "
                                                             "the start value when --target-kl is given)")
    g.add_argument("--target-kl", type=positive_float, help="adapt beta toward this KL per answer (Ziegler et al.)")
    g.add_argument("--kl-horizon", type=positive_int, help="the adaptive controller's horizon (default 10000)")
    g.add_argument("--gamma", type=unit_interval, help="ppo: discount (default 1)")
    g.add_argument("--lam", type=unit_interval, help="ppo: GAE lambda (default 0.95)")
    g.add_argument("--cliprange", type=positive_float, help="the policy ratio's clip eps (default 0.2)")
    g.add_argument("--cliprange-value", type=positive_float, help="ppo: the value's clip (default 0.2)")
    g.add_argument("--vf-coef", type=nonnegative_float, help="ppo: the value loss's weight (default 0.1)")
    g.add_argument("--ent-coef", type=nonnegative_float, help="entropy bonus weight (default 0)")
    g.add_argument("--ppo-epochs", type=positive_int, help="passes over each batch of rollouts (default 4)")
    g.add_argument("--minibatches", type=positive_int, help="optimizer steps per pass (default 1)")


def check_rl_flags(args):
    """The supervised methods refuse the RL flags (one line, exit 2) rather than ignore them."""
    given = [f for f in RL_FLAGS if getattr(args, f, None) is not None]
    if args.method not in RL_METHODS and given:
        raise UsageError(f"--{given[0].replace('_', '-')} is for --method ppo or grpo, not {args.method}")


def _reward_fn(directory):
    try:
        from .reward_model import load_reward_model
    except ImportError:
        raise UsageError("--reward-model: this minillm has no reward models (minillm/alignment/reward_model.py)") \
            from None
    from .ppo import reward_model_reward
    return reward_model_reward(*load_reward_model(directory))


def cmd_rl(args):
    import os

    from .. import checkpoint as ckpt
    from ..cli_train import _check_out
    from ..files import DirectoryLock
    from .ppo import PPOConfig, PPOTrainer
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if not args.reward_model:
        raise UsageError(f"--method {args.method} needs --reward-model DIR (the model that scores the answers)")
    if args.method == "ppo" and args.group_size is not None:
        raise UsageError("--group-size is for --method grpo (PPO samples one answer per prompt)")
    if args.pack:
        raise UsageError(f"--pack is for SFT examples; --method {args.method} samples its own answers")
    for flag in ("beta", "loss", "label_smoothing", "margin"):
        if getattr(args, flag, None) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} goes with --method reward or dpo; PPO / GRPO's KL "
                             "coefficient is --kl-coef")
    if getattr(args, "full", False) and args.tuning not in (None, "full"):
        raise UsageError(f"--full contradicts --tuning {args.tuning}: pass one")
    tuning = "full" if getattr(args, "full", False) else args.tuning or "lora"
    if tuning != "qlora" and args.scheme:
        raise UsageError("--scheme is the frozen base's quantization: it goes with --tuning qlora")
    if not os.path.isdir(args.reward_model):
        raise UsageError(f"--reward-model: {args.reward_model!r} is not a directory")
    defaults = PPOConfig()
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else getattr(defaults, name)  # noqa
    config = PPOConfig(
        method=tuning, algorithm=args.method, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha else 2.0 * args.lora_r, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, use_rslora=args.rslora, scheme=args.scheme or "nf4",
        lr=args.lr or (1e-5 if tuning == "full" else 1e-4), max_iters=args.max_iters,
        eval_interval=args.eval_interval or args.max_iters, eval_fraction=0.0, weight_decay=args.weight_decay,
        seed=args.seed, **{name: pick(name) for name in RL_FLAGS if name not in ("reward_model", "tuning")})
    out = args.out
    if os.path.isdir(out) and ckpt.has_checkpoint(out) and not (args.resume or args.overwrite):
        raise UsageError(f"{out!r} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                         "start over, or --out for another directory")
    if args.resume and not ckpt.has_checkpoint(out):
        raise UsageError(f"--resume: no checkpoint in {out!r}")
    run = PPOTrainer(args.model, args.data, out, config, None, progress=not args.no_progress, merge=args.merge,
                     resume=args.resume)                     # loads and checks the prompts: nothing written yet
    run.reward_fn = _reward_fn(args.reward_model)
    os.makedirs(out, exist_ok=True)
    with DirectoryLock(out):
        _check_out(args, out)
    trainable = sum(p.size for _, p in run.optimizer.named_parameters())
    print(f"finetune {args.method} ({tuning}): {run.model.num_parameters():,} parameters, {trainable:,} trained; "
          f"{len(run.prompts)} prompts, {config.rollouts} answers per step")
    result = run.run()
    print(f"done: step {result['step']} in {result['seconds']:.1f} s, mean reward {result['reward']:.4f} over the "
          f"last steps, peak memory {result['peak_memory_mib']:.0f} MiB; load it with: minillm chat --model {out}")
    return 0
