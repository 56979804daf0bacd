"""Pretraining on next-token prediction: the loop behind `minillm train`.

Each step: for grad_accum micro-batches, loss = cross_entropy(model(x), y) / grad_accum and
backward; clip the global gradient norm; AdamW step at the cosine-with-warmup learning rate.
Every eval_interval steps (and at the end) estimate train/val loss on fixed batches and save a
checkpoint. Runs are seeded and deterministic: --resume continues bit-exactly, because the
checkpoint holds the weights, the optimizer moments, the step and every RNG state.

Mixture-of-Experts models add their router losses to what is minimised (see DecoderLM.forward);
the logged "loss" stays the cross-entropy, so curves compare with a dense model's, and each step
record also holds "aux_loss", "z_loss", the per-block "expert_load" (the fraction of top-k
assignments each expert got) and "dropped" (the fraction dropped at capacity). Eval records hold
the expert load measured on the val batches.
"""
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np

from . import checkpoint as ckpt
from .autograd import no_grad
from .checkpoint_files import check_optimizer_arrays
from .config import config_from_dict  # noqa: F401 (public here too)
from . import families
from .data import cached_token_ids, decode, encode, read_text
from .distributed import DataParallel, LocalCommunicator, merge_from_ranks
from .files import DirectoryLock, atomic_write
from .generate import generate
from .models import build_model, model_config_from_dict
from .optim import SGD, AdamW, cosine_lr, param_groups
from .plots import plot_expert_load, plot_losses  # noqa: F401 (their old home; they draw train_log.jsonl)
from .train_config import (RESUMABLE, TrainConfig, check_model_fits, check_train_config,  # noqa: F401 (public here too)
                           resume_config)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite, or the loss blew up past max_loss; the
    step was not applied and the last good checkpoint is left as it was."""


def estimate_loss(model, data, config, block_size, step, comm=None):
    """Mean loss (the cross-entropy) over eval_iters batches of each split, drawn from an RNG fixed
    by (seed, step). An MoE model also gets "expert_load": per MoE block the mean fraction of
    assignments per expert over the val batches. comm: the batches are shared round robin over its
    ranks and the results merged in batch order, so every rank gets the single-process numbers."""
    comm = comm or LocalCommunicator()
    model.eval()
    results = {}                                     # (split, batch) -> (loss, expert load or None)
    with no_grad():
        for split in ("train", "val"):
            rng = np.random.default_rng([config.seed, step, split == "val"])
            for i in range(config.eval_iters):
                mine = i % comm.size == comm.rank
                x, y = data.get_batch(split, config.batch_size, block_size, rng, rows=None if mine else slice(0, 0))
                if mine:
                    loss = float(model.loss(x, y).data)
                    stats = model.moe_stats() if split == "val" else None
                    results[split, i] = (loss, stats["load"] if stats is not None else None)
    results = merge_from_ranks(results, comm)
    losses, loads = {}, []
    for split in ("train", "val"):
        total = 0.0
        for i in range(config.eval_iters):
            loss, load = results[split, i]
            total += loss
            if load is not None:
                loads.append(load)
        losses[split] = total / config.eval_iters
    if loads:
        losses["expert_load"] = np.mean(loads, axis=0).round(5).tolist()
    model.train()
    return losses


def mean_moe_stats(stats):
    """Average a list of DecoderLM.moe_stats() (e.g. over micro-batches) into one log record."""
    return {"aux_loss": float(np.mean([s["aux_loss"] for s in stats])),
            "z_loss": float(np.mean([s["z_loss"] for s in stats])),
            "expert_load": np.mean([s["load"] for s in stats], axis=0).round(5).tolist(),
            "dropped": np.mean([s["dropped"] for s in stats], axis=0).round(5).tolist()}


class Trainer:
    """Holds a run's model, optimizer, data and RNGs; `run()` trains to max_iters.

    comm: a minillm.distributed communicator (default: this process alone); with more than one
    rank every rank runs a Trainer on its shard of each batch and rank 0 alone writes (see
    minillm/distributed/data_parallel.py). parallel: a distributed.ParallelConfig (ZeRO, buckets).
    """

    def __init__(self, model_config, train_config, out_dir, data_path=None, resume=False, progress=True, log=print,
                 comm=None, parallel=None, resume_overrides=None, model_changes=None):
        """resume: continue the checkpoint in out_dir; its model and training config are used, with
        train_config.max_iters as the new end and resume_overrides (see resume_config) applied.
        model_changes: fields of the checkpoint's model config a resumed run changes (the longer
        context of `--block-size`: block_size and rope_scaling, minillm/context_extension.py)."""
        self.config, self.out_dir, self.progress, self.log = train_config, out_dir, progress, log
        self.comm = comm or LocalCommunicator()
        text = read_text(data_path)
        saved = ckpt.load_checkpoint(out_dir, optimizer_wanted=True) if resume else None
        if saved:
            where = f"checkpoint state file {os.path.join(saved['directory'], 'state.json')!r}"
            for key in ("rng", "optimizer_step", "step", "train_config"):
                if key not in saved["state"]:
                    raise ckpt.CheckpointError(f"{where} has no {key!r}: it cannot be resumed")
            where += ": train_config"
            try:
                self.tokenizer = saved["tokenizer"]
                model_config = model_config_from_dict({**saved["config"]["model"], **(model_changes or {})},
                                                      "checkpoint config: model")
                self.config = train_config = TrainConfig.from_dict(
                    resume_config(saved["state"]["train_config"], train_config.max_iters, resume_overrides), where)
            except (OSError, ValueError) as error:
                raise ckpt.CheckpointError(str(error)) from None
        else:
            self.tokenizer = families.build_tokenizer(model_config, train_config, text)
        if model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"the model's vocab_size {model_config.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        cache_dir = os.path.join(out_dir, "cache") if data_path is None else os.path.dirname(os.path.abspath(data_path))
        self.data = families.make_data(model_config, train_config, self.tokenizer, lambda: self.comm.root_first(
            lambda: cached_token_ids(text, self.tokenizer, data_path, cache_dir)))
        check_model_fits(model_config)
        self.init_rng = np.random.default_rng(train_config.seed)       # weights, then dropout masks
        self.model = build_model(model_config, rng=self.init_rng)
        self.data_rng = np.random.default_rng([train_config.seed, 1])
        groups = param_groups(self.model, train_config.weight_decay, train_config.decay_embeddings)
        if train_config.optimizer == "adamw":
            self.optimizer = AdamW(groups, train_config.lr, (train_config.beta1, train_config.beta2))
        elif train_config.optimizer == "sgd":
            self.optimizer = SGD(groups, train_config.lr)
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {train_config.optimizer!r}")
        self.dp = DataParallel(self.model, self.optimizer, self.comm, parallel)
        self.optimizer = self.dp.optimizer                      # ZeroAdamW when the moments are sharded
        self.step = 0
        self.last_moe = None           # the router losses and expert load of the last step (MoE models)
        self.best_val = math.inf
        self.resumed_at = None
        if saved:
            self._restore(saved)
        self.loss_limit = (train_config.max_loss if train_config.max_loss is not None
                           else 2 * math.log(self.model.config.vocab_size) + 1)
        self.dp.take_root_weights()                             # replicas start bit-identical

    def _restore(self, saved):
        """Weights, optimizer state, step and RNG states from a loaded checkpoint, each checked."""
        ckpt.load_weights(self.model, saved)
        path = os.path.join(saved["directory"], "state.json")
        check_optimizer_arrays(self.model, saved["optimizer"], os.path.join(saved["directory"], "optimizer.safetensors"))
        state = saved["state"]
        try:
            self.optimizer.load_state_dict({"step": state["optimizer_step"], "state": saved["optimizer"]})
        except (KeyError, ValueError) as error:
            raise ckpt.CheckpointError(f"checkpoint optimizer state does not fit the model: {error}") from None
        if state["step"] < 0 or state["optimizer_step"] < 0:
            raise ckpt.CheckpointError(f"checkpoint state file {path!r}: step must be >= 0, got {state['step']}")
        self.step = self.resumed_at = state["step"]
        self.best_val = state.get("best_val")
        self.best_val = math.inf if self.best_val is None else self.best_val
        for name, rng in (("data", self.data_rng), ("init", self.init_rng)):
            try:
                rng.bit_generator.state = state["rng"][name]
            except (KeyError, TypeError, ValueError, OverflowError):
                raise ckpt.CheckpointError(f"checkpoint state file {path!r}: rng.{name} is not a NumPy "
                                           f"{type(rng.bit_generator).__name__} state (the checkpoint is corrupt)") from None

    def save(self, losses=None):
        """A checkpoint of this step (collective: every rank calls it; rank 0 writes), after checking
        that the weights are finite: a checkpoint is never replaced by a broken model."""
        if not all(np.isfinite(p.data).all() for p in self.model.parameters()):
            raise TrainingDiverged(f"the weights hold NaN or infinite values at step {self.step}; stopped, and the "
                                   f"last checkpoint in {self.out_dir} was left as it was (try a lower --lr)")
        state = {"step": self.step, "train_config": asdict(self.config),
                 "best_val": self.best_val if math.isfinite(self.best_val) else None,
                 "losses": losses, "rng": {"data": self.data_rng.bit_generator.state,
                                           "init": self.init_rng.bit_generator.state}}
        optimizer = self.dp.optimizer_to_save(self.step)        # collective: replica check, ZeRO gather
        if self.comm.rank == 0:
            ckpt.save_checkpoint(self.out_dir, self.model, self.tokenizer, optimizer, state)

    def train_step(self):
        """One optimizer step; returns (loss, grad_norm, lr). loss is the mean cross-entropy; an MoE
        model minimises it plus its router losses, which go to self.last_moe with the expert load."""
        c, block = self.config, self.model.config.block_size
        self.dp.start_step(self.step, self.init_rng, c.seed)
        lr = cosine_lr(self.step, c.lr, c.min_lr, c.warmup_iters, c.decay_iters)
        self.optimizer.lr = lr
        total = objective = 0.0
        moe = []
        # this rank's rows of each micro-batch; weight = rows / global batch rows (1 / grad_accum alone)
        for rows, weight, final in self.dp.micro_batches(c.batch_size, c.grad_accum):
            x, y = self.data.get_batch("train", c.batch_size, block, self.data_rng, rows=rows)
            if not weight:
                continue
            loss = self.model.loss(x, y)
            with self.dp.backward(final):                   # gradient buckets start summing as they fill
                (loss * weight).backward()
            objective += float(loss.data) * weight
            stats = self.model.moe_stats()
            if stats is not None:
                moe.append(stats)
            total += (stats["ce"] if stats is not None else float(loss.data)) * weight
        grad_norm = self.dp.reduce_gradients(c.grad_clip)      # summed over the ranks, clipped by the global norm
        total, objective = self.dp.sum_over_ranks(total, objective)
        self.last_moe = mean_moe_stats(moe) if moe else None
        self._check_step(objective, total, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return total, grad_norm, lr

    def _check_step(self, objective, loss, grad_norm):
        """Stop before a step is applied if its loss or gradient is not finite or the loss blew up."""
        kept = f"stopped before applying it, and the last checkpoint in {self.out_dir} was left as it was"
        if not math.isfinite(objective):
            raise TrainingDiverged(f"the loss became {objective} at step {self.step}; {kept} (try a lower --lr)")
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {self.step} (the loss was "
                                   f"{loss:.4f}); {kept} (try a lower --lr)")
        if loss > self.loss_limit:
            raise TrainingDiverged(f"the loss blew up to {loss:.4g} at step {self.step}, above max_loss "
                                   f"{self.loss_limit:.4g}; {kept} (try a lower --lr, or set max_loss)")

    def evaluate_and_save(self, log_file):
        losses = estimate_loss(self.model, self.data, self.config, self.model.config.block_size, self.step, self.comm)
        for split in ("train", "val"):
            if not losses[split] <= self.loss_limit:          # NaN, inf or a blow-up: do not save this model
                raise TrainingDiverged(f"the {split} loss is {losses[split]:.4g} at step {self.step} (max_loss "
                                       f"{self.loss_limit:.4g}); stopped, and the last checkpoint in {self.out_dir} "
                                       "was left as it was (try a lower --lr)")
        self.best_val = min(self.best_val, losses["val"])
        self.save(losses)
        if self.comm.rank == 0:
            self.log(f"step {self.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        log_file.write(json.dumps({"step": self.step, "eval": True, **losses}) + "\n")
        log_file.flush()
        return losses

    def run(self):
        """Train to max_iters, evaluating and saving every eval_interval steps and at the end.
        Rank 0 holds the lock on out_dir throughout (files.DirectoryLock: one writer); a resumed
        run first cuts train_log.jsonl back to the checkpoint's step, so no line is repeated."""
        os.makedirs(self.out_dir, exist_ok=True)
        root = self.comm.rank == 0
        log_path = os.path.join(self.out_dir, "train_log.jsonl") if root else os.devnull
        with DirectoryLock(self.out_dir) if root else nullcontext():
            if self.resumed_at is not None and root:
                truncate_log(log_path, self.resumed_at)
            with open(log_path, "a") as log_file:
                return self._run(log_file)

    def _run(self, log_file):
        c = self.config
        tokens_per_step = c.batch_size * c.grad_accum * self.model.config.block_size
        losses = None
        start_time = time.perf_counter()
        step_losses = []
        bar = _progress(self.step, c.max_iters, self.progress and self.comm.rank == 0)
        while self.step < c.max_iters:
            if self.step % c.eval_interval == 0 and c.eval_iters and self.step != self.resumed_at:
                losses = self.evaluate_and_save(log_file)
            t0 = time.perf_counter()
            loss, grad_norm, lr = self.train_step()
            step_losses.append(loss)
            tok_s = tokens_per_step / (time.perf_counter() - t0)
            log_file.write(json.dumps({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                       "tokens_per_s": tok_s, **(self.last_moe or {})}) + "\n")
            if bar is not None:
                bar.update(1)
                aux = {"aux": f"{self.last_moe['aux_loss']:.3f}"} if self.last_moe else {}
                bar.set_postfix(loss=f"{loss:.4f}", **aux, lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
        if bar is not None:
            bar.close()
        if self.step == self.resumed_at:
            pass                                        # nothing trained since the checkpoint: it stands
        elif c.eval_iters:
            losses = self.evaluate_and_save(log_file)
        else:
            self.save()
        return {"step": self.step, "losses": losses, "step_losses": step_losses,
                "seconds": time.perf_counter() - start_time, "peak_memory_mib": peak_memory_mib(),
                "optimizer_state_mib": self.dp.optimizer_state_bytes() / 2 ** 20,
                "expert_load": (losses or {}).get("expert_load") or (self.last_moe or {}).get("expert_load")}

    def sample(self, prompt="\n", max_new_tokens=200, temperature=0.8, top_k=200, seed=None):
        """A sample from the model; a prompt the tokenizer cannot encode (a vocabulary without "\n")
        is replaced by the first token of the training data. The other families show a few
        held-out predictions instead (families.sample)."""
        if getattr(self.model.config, "family", "decoder") != "decoder":
            return families.sample(self, max_new_tokens)
        try:
            ids = encode(self.tokenizer, prompt).tolist()
        except ValueError:
            ids = []
        if not ids:
            ids = [int(self.data.splits["train"][0])]
            prompt = decode(self.tokenizer, ids)
        out = generate(self.model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                       seed=self.config.seed if seed is None else seed)
        return prompt + decode(self.tokenizer, out[0])


def truncate_log(path, step):
    """Rewrite train_log.jsonl (atomically) without the records past step, and any line a kill cut
    short: after a resume, the steps from the checkpoint on are logged once, by the resumed run."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, "".join(kept))


def _progress(start, total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)


def peak_memory_mib():
    """This process's peak resident memory so far, in MiB.

    Linux: VmHWM from /proc/self/status (ru_maxrss would include the parent's peak when this
    process was started by fork + exec); elsewhere ru_maxrss (macOS reports bytes).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def evaluate_split(model, ids, batch_size=32, progress=False):
    """Exact mean loss over a token stream cut into consecutive windows of the context length."""
    block = model.config.block_size
    n = (len(ids) - 1) // block
    if n < 1:
        raise ValueError(f"evaluation needs more than {block + 1} tokens, got {len(ids)}")
    x_all = np.asarray(ids[: n * block], dtype=np.int64).reshape(n, block)
    y_all = np.asarray(ids[1: n * block + 1], dtype=np.int64).reshape(n, block)
    total = 0.0
    bar = _progress(0, n, progress)
    model.eval()
    with no_grad():
        for i in range(0, n, batch_size):
            x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
            total += float(model.loss(x, y).data) * len(x)
            if bar is not None:
                bar.update(len(x))
    if bar is not None:
        bar.close()
    return total / n
