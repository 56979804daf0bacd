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
from dataclasses import asdict, dataclass

import numpy as np

from . import checkpoint as ckpt
from .autograd import no_grad
from .config import config_from_dict
from . import families
from .data import cached_token_ids, decode, encode, read_text, tokenizer_from_dict
from .distributed import DataParallel, LocalCommunicator, merge_from_ranks
from .generate import generate
from .models import build_model, model_config_from_dict
from .optim import SGD, AdamW, cosine_lr, param_groups
from .plots import plot_expert_load, plot_losses  # noqa: F401 (their old home; they draw train_log.jsonl)


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
    lr_decay_iters: int = 2000
    optimizer: str = "adamw"       # adamw | sgd
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0         # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    val_fraction: float = 0.1
    seed: int = 1337
    sample_tokens: int = 200       # length of the sample printed at the end (0: none)
    # other model families (minillm/families.py): MLM for encoders, the seq2seq data for encoder-decoders
    mlm_probability: float = 0.15  # encoder: the fraction of non-special tokens predicted
    task: str | None = None        # encoder_decoder: reverse | sort | add (generated) | span_corruption (the text)
    task_max_len: int = 12         # the longest source of a generated task, in characters
    noise_density: float = 0.15    # span_corruption: the fraction of tokens that are noise
    mean_noise_span_length: float = 3.0

    @classmethod
    def from_dict(cls, values):
        return config_from_dict(cls, values)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


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
                    loss = float(model(x, y)[1].data)
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
                 comm=None, parallel=None):
        self.config, self.out_dir, self.progress, self.log = train_config, out_dir, progress, log
        self.comm = comm or LocalCommunicator()
        text = read_text(data_path)
        saved = ckpt.load_checkpoint(out_dir, optimizer_wanted=True) if resume else None
        if saved:
            self.tokenizer = tokenizer_from_dict(saved["config"]["tokenizer"], out_dir)
            model_config = model_config_from_dict(saved["config"]["model"])
            self.config = train_config = TrainConfig.from_dict(saved["state"]["train_config"] | {
                "max_iters": train_config.max_iters})
        else:
            self.tokenizer = families.build_tokenizer(model_config, train_config, text)
        if model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"the model's vocab_size {model_config.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        cache_dir = os.path.join(out_dir, "cache") if data_path is None else os.path.dirname(os.path.abspath(data_path))
        self.data = families.make_data(model_config, train_config, self.tokenizer, lambda: self.comm.root_first(
            lambda: cached_token_ids(text, self.tokenizer, data_path, cache_dir)))
        self.init_rng = np.random.default_rng(train_config.seed)       # weights, then dropout masks
        self.model = build_model(model_config, rng=self.init_rng)
        self.data_rng = np.random.default_rng([train_config.seed, 1])
        groups = param_groups(self.model, train_config.weight_decay)
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
            try:
                self.model.load_state_dict(saved["model"])
            except (KeyError, ValueError) as error:
                raise ckpt.CheckpointError(f"checkpoint weights do not match its config: {error}") from None
            self.optimizer.load_state_dict({"step": saved["state"]["optimizer_step"], "state": saved["optimizer"]})
            state = saved["state"]
            self.step = self.resumed_at = state["step"]
            self.best_val = state.get("best_val", math.inf)
            self.data_rng.bit_generator.state = state["rng"]["data"]
            self.init_rng.bit_generator.state = state["rng"]["init"]
        self.dp.take_root_weights()                             # replicas start bit-identical

    def save(self, losses=None):
        state = {"step": self.step, "train_config": asdict(self.config), "best_val": self.best_val,
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
        lr = cosine_lr(self.step, c.lr, c.min_lr, c.warmup_iters, c.lr_decay_iters)
        self.optimizer.lr = lr
        total = objective = 0.0
        moe = []
        # this rank's rows of each micro-batch; weight = rows / global batch rows (1 / grad_accum alone)
        for rows, weight, final in self.dp.micro_batches(c.batch_size, c.grad_accum):
            x, y = self.data.get_batch("train", c.batch_size, block, self.data_rng, rows=rows)
            if not weight:
                continue
            _, loss = self.model(x, y)
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
        if not math.isfinite(objective):
            raise TrainingDiverged(f"the loss became {objective} at step {self.step}; stopped, and the last checkpoint "
                                   f"in {self.out_dir} was left as it was (try a lower --lr)")
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return total, grad_norm, lr

    def evaluate_and_save(self, log_file):
        losses = estimate_loss(self.model, self.data, self.config, self.model.config.block_size, self.step, self.comm)
        self.best_val = min(self.best_val, losses["val"])
        self.save(losses)
        if self.comm.rank == 0:
            self.log(f"step {self.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        log_file.write(json.dumps({"step": self.step, "eval": True, **losses}) + "\n")
        log_file.flush()
        return losses

    def run(self):
        c = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        tokens_per_step = c.batch_size * c.grad_accum * self.model.config.block_size
        losses = None
        start_time = time.perf_counter()
        step_losses = []
        log_path = os.path.join(self.out_dir, "train_log.jsonl") if self.comm.rank == 0 else os.devnull
        with open(log_path, "a") as log_file:
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
            if c.eval_iters:
                losses = self.evaluate_and_save(log_file)
            else:
                self.save()
        return {"step": self.step, "losses": losses, "step_losses": step_losses,
                "seconds": time.perf_counter() - start_time, "peak_memory_mib": peak_memory_mib(),
                "optimizer_state_mib": self.dp.optimizer_state_bytes() / 2 ** 20,
                "expert_load": (losses or {}).get("expert_load") or (self.last_moe or {}).get("expert_load")}

    def sample(self, prompt="\n", max_new_tokens=200, temperature=0.8, top_k=200, seed=None):
        if getattr(self.model.config, "family", "decoder") != "decoder":
            return families.sample(self, max_new_tokens)
        ids = encode(self.tokenizer, prompt).tolist()
        out = generate(self.model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                       seed=self.config.seed if seed is None else seed)
        return prompt + decode(self.tokenizer, out[0])


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
            total += float(model(x, y)[1].data) * len(x)
            if bar is not None:
                bar.update(len(x))
    if bar is not None:
        bar.close()
    return total / n
