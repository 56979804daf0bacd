"""The training recipe: TrainConfig, the ranges of its fields, and what a resumed run may change.

    TrainConfig(batch_size=12, lr=1e-3, ...)       # every field checked: kind and range
    resume_config(saved_dict, max_iters, {"eval_interval": 100})

A config file's "train" section, a checkpoint's state.json "train_config" and the command-line
flags all become a TrainConfig, so each value is checked in one place (check_train_config), with a
one-line error naming the field. docs/reliability.md states the resume rules.
"""
from dataclasses import dataclass

from .config import check_kind, config_from_dict, field_kinds


@dataclass
class TrainConfig:
    tokenizer: str = "char"        # char | bpe | unigram | wordpiece | path of a saved tokenizer
    tokenizer_vocab_size: int | None = None   # for trained tokenizers; None: the model's vocab_size
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = 2000   # the cosine ends here (None: at max_iters); see resume_config
    optimizer: str = "adamw"       # adamw | sgd
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    decay_embeddings: bool = False # also decay the embedding tables (a tied head too), as nanoGPT does
    grad_clip: float = 1.0         # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    val_fraction: float = 0.1
    seed: int = 1337
    sample_tokens: int = 200       # length of the sample printed at the end (0: none)
    max_loss: float | None = None  # a step loss above it stops the run (None: 2 ln(vocab_size) + 1)
    # other model families (minillm/families.py): MLM for encoders, the seq2seq data for encoder-decoders
    mlm_probability: float = 0.15  # encoder: the fraction of non-special tokens predicted
    task: str | None = None        # encoder_decoder: reverse | sort | add (generated) | span_corruption (the text)
    task_max_len: int = 12         # the longest source of a generated task, in characters
    noise_density: float = 0.15    # span_corruption: the fraction of tokens that are noise
    mean_noise_span_length: float = 3.0

    def __post_init__(self):
        check_train_config(self)

    @classmethod
    def from_dict(cls, values, where=None):
        return config_from_dict(cls, values, where)

    @property
    def decay_iters(self):
        """Where the cosine schedule reaches min_lr: lr_decay_iters, or max_iters when it is None."""
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


# the ranges of TrainConfig's fields: (low, high, low open?, high open?); None: unbounded
RANGES = {"batch_size": (1, None), "grad_accum": (1, None), "max_iters": (0, None), "lr": (0, None, True),
          "min_lr": (0, None), "warmup_iters": (0, None), "lr_decay_iters": (1, None), "beta1": (0, 1, False, True),
          "beta2": (0, 1, False, True), "weight_decay": (0, None), "grad_clip": (0, None), "eval_interval": (1, None),
          "eval_iters": (0, None), "val_fraction": (0, 1, True, True), "seed": (0, 2 ** 63 - 1),
          "sample_tokens": (0, None), "tokenizer_vocab_size": (1, None), "max_loss": (0, None, True),
          "mlm_probability": (0, 1, True, True), "task_max_len": (1, None), "noise_density": (0, 1, True, True),
          "mean_noise_span_length": (1, None)}
# what a resumed run may change: its length and schedule end, its evaluations, its sample, its guard
RESUMABLE = ("max_iters", "lr_decay_iters", "eval_interval", "eval_iters", "sample_tokens", "max_loss")


def check_train_config(c):
    """ValueError naming the field when a TrainConfig value is of the wrong kind or out of range."""
    for name, kind in field_kinds(TrainConfig).items():
        check_kind(getattr(c, name), kind, f"TrainConfig: {name}")
    for name, (low, high, *open_) in RANGES.items():
        value = getattr(c, name)
        if value is None:
            continue
        low_open, high_open = (list(open_) + [False, False])[:2]
        if (value < low or (low_open and value == low)) or (high is not None and (value > high or (high_open and value == high))):
            interval = (f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}" if high is not None
                        else f"{'>' if low_open else '>='} {low}")
            raise ValueError(f"TrainConfig: {name} must be {interval}, got {value!r}")
    if c.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"TrainConfig: optimizer must be 'adamw' or 'sgd', got {c.optimizer!r}")
    if not c.tokenizer:
        raise ValueError("TrainConfig: tokenizer must name a kind or a path, got ''")


def resume_config(saved, max_iters, overrides=None):
    """The TrainConfig a resumed run continues with: the checkpoint's (saved, a dict), with
    max_iters the new end and `overrides` (fields of RESUMABLE only) applied.

    The schedule: the cosine decay ends at lr_decay_iters. When the checkpoint's run decayed to
    its own end (lr_decay_iters equal to its max_iters, or None) and no lr_decay_iters is given,
    the decay moves to the new max_iters: the steps from here on get the learning rate a run
    planned for max_iters from the start gets at those steps, cosine_lr(step, lr, min_lr,
    warmup_iters, max_iters). Any other lr_decay_iters stays as it was. The same max_iters
    changes nothing, so a resumed run is bit-exact.
    """
    overrides = dict(overrides or {})
    refused = sorted(set(overrides) - set(RESUMABLE))
    if refused:
        raise ValueError(f"resume: {refused} are part of the checkpoint's training recipe and cannot change; "
                         f"a resumed run may change only {list(RESUMABLE)}")
    values = dict(saved)
    if "lr_decay_iters" not in overrides and values.get("lr_decay_iters") in (None, values.get("max_iters")):
        values["lr_decay_iters"] = None if values.get("lr_decay_iters") is None else max_iters
    values.update(overrides, max_iters=max_iters)
    return values


def check_model_fits(model_config, bytes_per_parameter=16, what="training"):
    """ValueError if the model cannot fit in this machine's memory: its parameters times
    bytes_per_parameter (16 to train: float32 weights, gradients and AdamW's two moments; 4 to run)
    against the RAM. A config of a trillion layers is refused here instead of being built block by
    block until the machine gives out."""
    from .config import physical_memory
    from .scaling.counts import count_parameters
    ram = physical_memory()
    params = count_parameters(model_config)
    if ram and params * bytes_per_parameter > ram:
        raise ValueError(f"the model has {params:,} parameters: {what} it needs about "
                         f"{params * bytes_per_parameter / 2 ** 30:,.1f} GiB, more than this machine's "
                         f"{ram / 2 ** 30:,.1f} GiB of memory")


def resume_conflicts(saved_model, saved_train, model, train):
    """[(section, key, given, saved)] for each setting in model / train (what a config file and the
    flags say) that differs from the checkpoint's and that a resumed run cannot change (RESUMABLE
    can; a null model value, such as vocab_size left to the tokenizer, says nothing)."""
    conflicts = []
    for section, given, saved in (("model", model, saved_model), ("train", train, saved_train)):
        for key, value in given.items():
            if value is None or (section == "train" and key in RESUMABLE) or key not in saved:
                continue
            if value != saved[key]:
                conflicts.append((section, key, value, saved[key]))
    return conflicts
