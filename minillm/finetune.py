"""Supervised fine-tuning (full, LoRA, QLoRA): the loop behind `minillm finetune`.

    run = Finetuner("smollm2-135m-instruct", "data.jsonl", "out/sft", FinetuneConfig(method="lora"))
    run.run()            # out/sft: checkpoints, train_log.jsonl, adapter/ (peft's files), finetune.json

Each step: batch_size examples (or packed rows, minillm/sft_data.py) drawn by the data RNG; loss = the
mean cross-entropy over trained (assistant / completion) tokens; clip the global gradient norm;
AdamW at the cosine-with-warmup learning rate, over the trainable parameters only (the adapters for
LoRA and QLoRA: the frozen base has no gradient and no optimizer state). Every eval_interval steps
and at the end: eval loss and token accuracy on the held-out examples, and a checkpoint (atomic, in
minillm/checkpoint.py's layout) holding the trained weights (only the adapters for LoRA), the
optimizer moments, the step and the RNG states, so --resume rebuilds the base from its source and
continues bit-exactly. A NaN or infinite loss or gradient stops the run before the step is applied.

The output directory loads in `minillm generate` / `chat` (load_pretrained reads finetune.json: the
base plus adapter/, or merged/ when the run was asked to --merge, or the full model's checkpoint).
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import checkpoint as ckpt
from . import functional as F
from .autograd import no_grad
from .files import DirectoryLock, write_json
from .lora import LoraConfig, adapter_state_dict, apply_lora, load_adapter, merge_lora, save_adapter, set_adapter_rng
from .nn.quantized import QLORA_SCHEMES
from .optim import AdamW, clip_grad_norm, cosine_lr, param_groups
from .pretrained import load_base
from .sft_data import load_examples, pack_rows, packed_batch, pad_batch, split_examples
from .train import TrainingDiverged, _progress, peak_memory_mib, truncate_log

METHODS = ("full", "lora", "qlora")
MANIFEST = "finetune.json"


@dataclass
class FinetuneConfig:
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str | None = None     # comma-separated; None: peft's default for the layout
    use_rslora: bool = False
    scheme: str = "nf4"                   # qlora: the frozen base's scheme
    lr: float = 2e-4
    min_lr: float = 0.0
    warmup_iters: int = 0
    max_iters: int = 100
    batch_size: int = 4
    eval_interval: int = 50
    eval_fraction: float = 0.1
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    pack: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"finetune: method must be one of {METHODS}, got {self.method!r}")
        if self.method == "qlora" and self.scheme not in QLORA_SCHEMES:
            raise ValueError(f"finetune: scheme must be one of {QLORA_SCHEMES}, got {self.scheme!r}")
        for name in ("max_iters", "batch_size", "eval_interval", "lora_r"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"finetune: {name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"finetune: eval_fraction must be in [0, 1), got {self.eval_fraction}")

    def lora(self):
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.target_modules, use_rslora=self.use_rslora)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class _AdapterView:
    """What save_checkpoint needs of a model, holding only the adapters (a LoRA run's checkpoint; state:
    what is trained, adapter_state_dict by default)."""

    def __init__(self, model, state=None):
        self.config, self.quantization, self._model = model.config, None, model
        self._state = state or (lambda: adapter_state_dict(model))

    def state_dict(self):
        return self._state()


class Finetuner:
    """A fine-tuning run: the base model (adapted), the data split, the optimizer and the RNGs."""

    def __init__(self, source, data_path, out_dir, config, resume=False, progress=True, log=print, merge=False):
        self.out_dir, self.progress, self.log, self.merge = out_dir, progress, log, merge
        saved = ckpt.load_checkpoint(out_dir, optimizer_wanted=True) if resume else None
        if saved:
            run = saved["state"]["train_config"]
            kinds = [run.get("objective") or "SFT", getattr(config, "objective", None) or "SFT"]   # saved, asked
            if kinds[0] != kinds[1]:
                raise ckpt.CheckpointError(f"--resume: the run in {out_dir!r} is a {kinds[0]} run, not {kinds[1]}; "
                                           "resume it with the --method it was started with")
            source, config = run.get("source", source), type(config).from_dict({**run, "max_iters": config.max_iters})
        if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
            source = os.path.abspath(source)              # the manifest and --resume find it from anywhere
        self.source, self.data_path, self.config = source, data_path, config
        self.model, self.tokenizer = load_base(source, config.method, config.scheme)
        c = self.config
        examples = self.load_data(data_path)                                    # before any write
        self.train_examples, self.eval_examples = split_examples(examples, c.eval_fraction, c.seed)
        self.rows = pack_rows(self.train_examples, self.model.config.block_size) if c.pack else None
        if c.method != "full":
            apply_lora(self.model, c.lora(), rng=np.random.default_rng([c.seed, 3]))
        self.model = self.wrap_model(self.model)
        self.model.train()
        self.optimizer = AdamW(param_groups(self.model, c.weight_decay), c.lr)
        self.data_rng = np.random.default_rng([c.seed, 1])
        self.step, self.resumed_at, self.best_val = 0, None, math.inf
        if saved:
            self._restore(saved)

    def _restore(self, saved):
        arrays = saved["model"]
        if self.config.method == "full":
            ckpt.load_weights(self.model, saved)
        else:
            params = dict(self.model.named_parameters())
            if set(arrays) != set(self.trained_state()):
                raise ckpt.CheckpointError(f"checkpoint {saved['directory']!r}: its adapters do not match the run's config")
            for name, array in arrays.items():
                params[name].data = np.array(array, dtype=params[name].dtype)
        state = saved["state"]
        self.optimizer.load_state_dict({"step": state["optimizer_step"], "state": saved["optimizer"]})
        self.step = self.resumed_at = state["step"]
        self.best_val = state.get("best_val") if state.get("best_val") is not None else math.inf
        self.data_rng.bit_generator.state = state["rng"]["data"]

    # ---- what a subclass (minillm/alignment: reward models, DPO) changes

    def load_data(self, path):
        """The checked examples of the data file."""
        return load_examples(path, self.tokenizer, self.model.config.block_size)

    def wrap_model(self, model):
        """The model to train, made from the (adapted) base."""
        return model

    def trained_state(self):
        """{name: array} a LoRA run's checkpoint holds."""
        return adapter_state_dict(self.model)

    def summary(self, losses):
        """The eval line's figures."""
        return (f", val loss {losses['val']:.4f}, val token accuracy {losses['val_token_accuracy']:.3f}"
                if "val" in losses else "")

    # ---- one step

    def next_batch(self):
        c = self.config
        if self.rows is not None:
            picked = self.data_rng.choice(len(self.rows), size=min(c.batch_size, len(self.rows)), replace=False)
            return packed_batch(self.train_examples, [self.rows[i] for i in picked])
        picked = self.data_rng.choice(len(self.train_examples), size=min(c.batch_size, len(self.train_examples)),
                                      replace=False)
        return pad_batch([self.train_examples[i] for i in picked])

    def loss(self, batch):
        """(loss Tensor, trained-token accuracy, trained tokens) of a batch."""
        logits = self.model(batch["ids"], positions=batch.get("positions"), key_padding_mask=batch.get("mask"))
        return sft_loss(logits, batch["targets"])

    def train_step(self):
        c = self.config
        set_adapter_rng(self.model, np.random.default_rng([c.seed, 4, self.step]))   # dropout: same masks on resume
        self.optimizer.lr = lr = cosine_lr(self.step, c.lr, c.min_lr, c.warmup_iters, c.max_iters)
        batch = self.next_batch()
        loss, accuracy, tokens = self.loss(batch)
        value = float(loss.data)
        kept = f"stopped before applying it; the last checkpoint in {self.out_dir} was left as it was (try a lower --lr)"
        if not math.isfinite(value):
            raise TrainingDiverged(f"the loss became {value} at step {self.step}; {kept}")
        loss.backward()
        grad_norm = clip_grad_norm([p for _, p in self.optimizer.named_parameters()], c.grad_clip)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {self.step}; {kept}")
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return {"loss": value, "token_accuracy": accuracy, "lr": lr, "grad_norm": grad_norm,
                "tokens": int(batch["ids"].size), "trained_tokens": tokens}

    def evaluate(self):
        """{"val": mean loss, "val_token_accuracy"} over the held-out examples (weighted by trained tokens)."""
        if not self.eval_examples:
            return {}
        self.model.eval()
        total = correct = count = 0.0
        with no_grad():
            for i in range(0, len(self.eval_examples), self.config.batch_size):
                loss, accuracy, n = self.loss(pad_batch(self.eval_examples[i:i + self.config.batch_size]))
                total, correct, count = total + float(loss.data) * n, correct + accuracy * n, count + n
        self.model.train()
        return {"val": total / count, "val_token_accuracy": correct / count}

    # ---- saving

    def save(self, losses=None):
        if not all(np.isfinite(p.data).all() for _, p in self.optimizer.named_parameters()):
            raise TrainingDiverged(f"the weights hold NaN or infinite values at step {self.step}; stopped, and the "
                                   f"last checkpoint in {self.out_dir} was left as it was")
        state = {"step": self.step, "train_config": {**asdict(self.config), "source": self.source},
                 "best_val": self.best_val if math.isfinite(self.best_val) else None, "losses": losses,
                 "rng": {"data": self.data_rng.bit_generator.state}}
        model = self.model if self.config.method == "full" else _AdapterView(self.model, self.trained_state)
        ckpt.save_checkpoint(self.out_dir, model, self.tokenizer, self.optimizer, state)

    def write_outputs(self):
        """adapter/ (peft's files) for LoRA, merged/ with merge, and finetune.json naming them."""
        manifest = {"format": "minillm-finetune-1", "base": self.source, "method": self.config.method,
                    "scheme": self.config.scheme if self.config.method == "qlora" else None, "adapter": None,
                    "merged": None, "step": self.step}
        if self.config.method != "full":
            save_adapter(self.model, os.path.join(self.out_dir, "adapter"), base=self.source)
            manifest["adapter"] = "adapter"
            if self.merge:
                merged, _ = load_base(self.source, "full", None)
                merge_lora(load_adapter(merged, os.path.join(self.out_dir, "adapter")))
                ckpt.save_checkpoint(os.path.join(self.out_dir, "merged"), merged, self.tokenizer,
                                     state={"step": self.step, "merged_from": self.source})
                manifest["merged"] = "merged"
        write_json(os.path.join(self.out_dir, MANIFEST), manifest)

    # ---- the run

    def run(self):
        os.makedirs(self.out_dir, exist_ok=True)
        log_path = os.path.join(self.out_dir, "train_log.jsonl")
        with DirectoryLock(self.out_dir):
            if self.resumed_at is not None:
                truncate_log(log_path, self.resumed_at)
            with open(log_path, "a") as log_file:
                return self._run(log_file)

    def _eval_and_save(self, log_file, train_loss):
        losses = {"train": train_loss, **self.evaluate()}
        self.best_val = min(self.best_val, losses.get("val", math.inf))
        self.save(losses)
        log_file.write(json.dumps({"step": self.step, "eval": True, **losses}) + "\n")
        log_file.flush()
        self.log(f"step {self.step}: train loss {train_loss:.4f}" + self.summary(losses))
        return losses

    def _run(self, log_file):
        c = self.config
        start, recent, losses = time.perf_counter(), [], None
        bar = _progress(self.step, c.max_iters, self.progress)
        while self.step < c.max_iters:
            t0 = time.perf_counter()
            record = self.train_step()
            record["tokens_per_s"] = record["tokens"] / (time.perf_counter() - t0)
            recent = (recent + [record["loss"]])[-c.eval_interval:]
            log_file.write(json.dumps({"step": self.step, **record}) + "\n")
            if bar is not None:
                bar.update(1)
                accuracy = record.get("token_accuracy", record.get("accuracy", record.get("rewards/accuracies", 0)))
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{accuracy:.3f}",
                                tok_s=f"{record['tokens_per_s']:,.0f}")
            if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                losses = self._eval_and_save(log_file, float(np.mean(recent)))
        if bar is not None:
            bar.close()
        self.write_outputs()
        return {"step": self.step, "losses": losses, "seconds": time.perf_counter() - start,
                "peak_memory_mib": peak_memory_mib()}


def sft_loss(logits, targets):
    """(mean cross-entropy over positions whose target is not -100, accuracy of the argmax there, count)."""
    B, T, V = logits.shape
    flat = targets.reshape(-1)
    kept = flat != -100
    loss = F.cross_entropy(logits.reshape(B * T, V), flat)
    n = int(kept.sum())
    hits = (logits.data.reshape(B * T, V)[kept].argmax(axis=-1) == flat[kept]).sum() if n else 0
    return loss, float(hits) / max(n, 1), n
