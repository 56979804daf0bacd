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

Data parallel (`mpiexec -n N minillm finetune`, comm: a minillm.distributed communicator; see
docs/distributed.md): every rank draws the same global batch with the same data RNG and keeps the
contiguous rows [r G / N, (r + 1) G / N) of its G examples (or packed rows), padded or packed on
their own. A rank's mean loss L_r is over its n_r trained tokens; it is back-propagated with the
weight n_r / n, n the trained tokens of the whole global batch (every rank counts them from the
picks), so

    sum over ranks of (n_r / n) L_r  =  the mean loss over the global batch's trained tokens,

and the trainable gradients, summed over the ranks (DataParallel), are the single-process ones up
to float32 rounding. The step is the same on every rank; evaluation batches are shared round robin
and merged in order (the single-process figures exactly); only rank 0 writes.
"""
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import checkpoint as ckpt
from . import functional as F
from .autograd import no_grad
from .distributed import DataParallel, LocalCommunicator, merge_from_ranks, micro_batch_rows
from .files import DirectoryLock, write_json
from .lora import LoraConfig, adapter_state_dict, apply_lora, load_adapter, merge_lora, save_adapter, set_adapter_rng
from .nn.quantized import QLORA_SCHEMES
from .optim import AdamW, cosine_lr, param_groups
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

    def __init__(self, source, data_path, out_dir, config, resume=False, progress=True, log=print, merge=False,
                 comm=None, parallel=None):
        """comm: a minillm.distributed communicator (default: this process alone), parallel: its
        distributed.ParallelConfig (ZeRO-1, buckets). Construction makes no collective call, so the
        CLI builds rank 0's first (its errors are the run's) and the replicas meet in run()."""
        self.out_dir, self.progress, self.merge = out_dir, progress, merge
        self.comm = comm or LocalCommunicator()
        self.log = log if self.comm.rank == 0 else (lambda message: None)
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
        rows = min(c.batch_size, len(self.rows if c.pack else self.train_examples))
        if rows < self.comm.size:
            raise ValueError(f"finetune: a batch of {rows} {'packed rows' if c.pack else 'examples'} cannot be shared "
                             f"by {self.comm.size} ranks; raise --batch-size (or give more data), or use fewer ranks")
        if c.method != "full":
            apply_lora(self.model, c.lora(), rng=np.random.default_rng([c.seed, 3]))
        self.model = self.wrap_model(self.model)
        self.model.train()
        self.dp = DataParallel(self.model, AdamW(param_groups(self.model, c.weight_decay), c.lr), self.comm, parallel)
        self.optimizer = self.dp.optimizer                      # ZeroAdamW when the moments are sharded
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
        """This rank's part of the step's global batch (all of it in one process), with
        "global_trained": the trained tokens of the whole global batch."""
        c = self.config
        items = self.rows if self.rows is not None else [[i] for i in range(len(self.train_examples))]
        picked = self.data_rng.choice(len(items), size=min(c.batch_size, len(items)), replace=False)
        mine = picked[micro_batch_rows(len(picked), 1, self.comm.rank, self.comm.size)[0][0]]
        if self.rows is not None:
            batch = packed_batch(self.train_examples, [self.rows[i] for i in mine])
        else:
            batch = pad_batch([self.train_examples[i] for i in mine])
        batch["global_trained"] = sum(int(self.train_examples[e][1][1:].sum()) for i in picked for e in items[i])
        return batch

    def loss(self, batch):
        """(loss Tensor, trained-token accuracy, trained tokens) of a batch."""
        logits = self.model(batch["ids"], positions=batch.get("positions"), key_padding_mask=batch.get("mask"))
        return sft_loss(logits, batch["targets"])

    def train_step(self):
        c = self.config
        dropout = np.random.default_rng([c.seed, 4, self.step])      # the same masks on resume
        self.dp.start_step(self.step, dropout, c.seed)                # N > 1: rank r's own masks; MINILLM_FAULT
        set_adapter_rng(self.model, dropout)
        self.optimizer.lr = lr = cosine_lr(self.step, c.lr, c.min_lr, c.warmup_iters, c.max_iters)
        batch = self.next_batch()
        loss, accuracy, tokens = self.loss(batch)
        weight = tokens / batch["global_trained"]                     # 1 in one process
        with self.dp.backward(final=True):                            # gradient buckets sum as they fill
            (loss * weight).backward()
        grad_norm = self.dp.reduce_gradients(c.grad_clip)             # summed over the ranks, clipped globally
        value, accuracy, tokens, seen = self.dp.sum_over_ranks(float(loss.data) * weight, accuracy * weight,
                                                               tokens, batch["ids"].size)
        kept = f"stopped before applying it; the last checkpoint in {self.out_dir} was left as it was (try a lower --lr)"
        if not math.isfinite(value):
            raise TrainingDiverged(f"the loss became {value} at step {self.step}; {kept}")
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {self.step}; {kept}")
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return {"loss": value, "token_accuracy": accuracy, "lr": lr, "grad_norm": grad_norm,
                "tokens": int(seen), "trained_tokens": int(tokens)}

    def evaluate(self):
        """{"val": mean loss, "val_token_accuracy"} over the held-out examples (weighted by trained tokens)."""
        if not self.eval_examples:
            return {}
        self.model.eval()
        size, results = self.config.batch_size, {}     # batch k on rank k mod N, merged in batch order
        with no_grad():
            for k, i in enumerate(range(0, len(self.eval_examples), size)):
                if k % self.comm.size == self.comm.rank:
                    loss, accuracy, n = self.loss(pad_batch(self.eval_examples[i:i + size]))
                    results[k] = (float(loss.data), accuracy, n)
        self.model.train()
        total = correct = count = 0.0
        for k, (loss, accuracy, n) in sorted(merge_from_ranks(results, self.comm).items()):
            total, correct, count = total + loss * n, correct + accuracy * n, count + n
        return {"val": total / count, "val_token_accuracy": correct / count}

    # ---- saving

    def save(self, losses=None):
        """A checkpoint of this step (collective: every rank calls it; rank 0 writes)."""
        if not all(np.isfinite(p.data).all() for _, p in self.optimizer.named_parameters()):
            raise TrainingDiverged(f"the weights hold NaN or infinite values at step {self.step}; stopped, and the "
                                   f"last checkpoint in {self.out_dir} was left as it was")
        state = {"step": self.step, "train_config": {**asdict(self.config), "source": self.source},
                 "best_val": self.best_val if math.isfinite(self.best_val) else None, "losses": losses,
                 "rng": {"data": self.data_rng.bit_generator.state}}
        model = self.model if self.config.method == "full" else _AdapterView(self.model, self.trained_state)
        optimizer = self.dp.optimizer_to_save(self.step)        # collective: replica check, ZeRO gather
        if self.comm.rank == 0:
            ckpt.save_checkpoint(self.out_dir, model, self.tokenizer, optimizer, state)

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
        """Train to max_iters (collective: every rank calls it). Rank 0 alone holds the lock on
        out_dir and writes the checkpoints, train_log.jsonl, the progress bar and the outputs."""
        self.dp.take_root_weights()                             # replicas start bit-identical
        root = self.comm.rank == 0
        if root:
            os.makedirs(self.out_dir, exist_ok=True)
        log_path = os.path.join(self.out_dir, "train_log.jsonl") if root else os.devnull
        with DirectoryLock(self.out_dir) if root else nullcontext():
            if self.resumed_at is not None and root:
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
        bar = _progress(self.step, c.max_iters, self.progress and self.comm.rank == 0)
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
        if self.comm.rank == 0:
            self.write_outputs()
        return {"step": self.step, "losses": losses, "seconds": time.perf_counter() - start,
                "peak_memory_mib": peak_memory_mib(), "optimizer_state_mib": self.dp.optimizer_state_bytes() / 2 ** 20}


def sft_loss(logits, targets):
    """(mean cross-entropy over positions whose target is not -100, accuracy of the argmax there, count)."""
    B, T, V = logits.shape
    flat = targets.reshape(-1)
    kept = flat != -100
    loss = F.cross_entropy(logits.reshape(B * T, V), flat)
    n = int(kept.sum())
    hits = (logits.data.reshape(B * T, V)[kept].argmax(axis=-1) == flat[kept]).sum() if n else 0
    return loss, float(hits) / max(n, 1), n
