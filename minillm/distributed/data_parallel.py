"""Data parallelism for the Trainer (and the Finetuner, minillm/finetune.py, which weights each rank
by its share of the batch's trained tokens): every rank holds the model and trains on its shard of each
global batch; the gradients are summed over the ranks before the optimizer step.

The objective is the one a single process minimises. A step's global batch is grad_accum
micro-batches of batch_size rows (G = batch_size * grad_accum rows), drawn exactly as one process
draws them: every rank runs the same data RNG (seeded by rank 0's config) through the whole draw
and keeps its rows, rank r the contiguous rows [r G / N, (r + 1) G / N). A rank's piece of
micro-batch m has n rows and mean loss L; it is weighted n / G, so

    sum over ranks and micro-batches of (n / G) L  =  mean loss over the G rows of the global batch

and its gradient, summed over the ranks, is the single-process gradient up to the order of the
float32 additions. With N = 1 this is exactly the single-process loop (weights B / G = 1 / grad_accum).
The data order depends only on the data RNG, so a run resumes with any number of ranks and
continues the same sequence of batches.

Dropout: with N > 1, rank r's masks at step s come from a generator seeded (seed, 2, r, s), so a
resumed run is bit-exact on the same N; they are a different (equally random) draw from a
single-process run's, whose one stream continues as before. All presets train without dropout.
"""
import os
import zlib
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ..optim import AdamW, clip_grad_norm
from .buckets import FlatLayout, GradientSync
from .faults import inject_fault
from .zero import SavedOptimizer, ZeroAdamW


@dataclass
class ParallelConfig:
    zero: bool = False         # shard AdamW's moments over the ranks (ZeRO stage 1)
    bucket_mb: float = 4.0     # gradient bucket size, MiB
    overlap: bool = True       # start each bucket's sum during backward (else one sum after it)

    def __post_init__(self):
        if not self.bucket_mb > 0:
            raise ValueError(f"ParallelConfig: bucket_mb (--bucket-mb) must be > 0, got {self.bucket_mb}")


def micro_batch_rows(batch_size, grad_accum, rank, size):
    """This rank's part of each of a step's grad_accum micro-batches: a list of (rows, weight,
    final) with rows a slice of the micro-batch's batch_size rows (possibly empty), weight = rows
    / (batch_size * grad_accum), final True on this rank's last non-empty piece."""
    total = batch_size * grad_accum
    if total < size:
        raise ValueError(f"data parallel: the global batch of {total} rows (batch_size {batch_size} x grad_accum "
                         f"{grad_accum}) cannot be shared by {size} ranks; raise batch_size or grad_accum")
    lo, hi = rank * total // size, (rank + 1) * total // size
    plan = []
    for m in range(grad_accum):
        a, b = max(lo, m * batch_size), min(hi, (m + 1) * batch_size)
        if a < b:
            plan.append([slice(a - m * batch_size, b - m * batch_size), (b - a) / total, False])
        else:
            plan.append([slice(0, 0), 0.0, False])
    last = max(m for m, (_, weight, _) in enumerate(plan) if weight)
    plan[last][2] = True
    return [tuple(p) for p in plan]


class DataParallel:
    """What the Trainer asks of the ranks. With one rank and no sharding every method is the
    single-process behaviour (no copies, no collectives).

    optimizer: use dp.optimizer (a ZeroAdamW when config.zero) instead of the one passed in.
    The ranks keep the trainable parameters in step (requires_grad: every one for pretraining, the
    adapters for a LoRA fine-tune): only they are broadcast, summed and sharded. A frozen parameter
    is loaded the same way on every rank and never changes.
    """

    def __init__(self, model, optimizer, comm, config=None):
        self.comm, self.config = comm, config or ParallelConfig()
        self.model, self.optimizer, self.sync = model, optimizer, None
        self.params = [p for p in model.parameters() if p.requires_grad]
        if comm.size == 1 and not self.config.zero:
            return
        if self.config.zero and not isinstance(optimizer, AdamW):
            raise ValueError(f"--zero shards AdamW's moments; it does not apply to {type(optimizer).__name__}")
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        layout = FlatLayout(trainable[::-1], self.config.bucket_mb * 2 ** 20)
        self.sync = GradientSync(layout, comm, sharded=self.config.zero, overlap=self.config.overlap)
        if self.config.zero:
            self.optimizer = ZeroAdamW(optimizer, self.sync)
        self.fault = os.environ.get("MINILLM_FAULT")

    @property
    def is_root(self):
        return self.comm.rank == 0

    def start_step(self, step, dropout_rng, seed):
        """Before each step: with N > 1 this rank's dropout masks for the step (see the module
        docstring); the test hook for faults."""
        self.comm.set_context(f"step {step}")
        if self.sync is None:
            return
        if self.comm.size > 1:
            dropout_rng.bit_generator.state = np.random.default_rng([seed, 2, self.comm.rank, step]).bit_generator.state
        if self.fault:
            inject_fault(self.fault, self.comm.rank, step)

    def take_root_weights(self):
        """Collective, once the model is built (and loaded): rank 0's weights on every rank (one
        broadcast), so the replicas start bit-identical wherever initialisation could differ."""
        if self.sync is None or self.comm.size == 1:
            return
        layout, flat = self.sync.layout, self.sync.flat
        for i, p in enumerate(layout.params):
            layout.view(flat, i)[...] = p.data
        self.comm.bcast(flat)
        for i, p in enumerate(layout.params):
            p.data[...] = layout.view(flat, i)

    def micro_batches(self, batch_size, grad_accum):
        """(rows, weight, final) for each micro-batch of the step; see micro_batch_rows."""
        return micro_batch_rows(batch_size, grad_accum, self.comm.rank, self.comm.size)

    def backward(self, final):
        """Context around each backward pass (final: this rank's last one of the step)."""
        return self.sync.backward(final) if self.sync is not None else nullcontext()

    def sum_over_ranks(self, *values):
        """Python floats summed over the ranks (e.g. this rank's weighted share of the loss)."""
        if self.comm.size == 1:
            return values
        total = np.array(values, np.float64)
        self.comm.allreduce(total)
        return tuple(float(v) for v in total)

    def reduce_gradients(self, max_norm):
        """Sum the gradients over the ranks, then clip them by their global norm (clip_grad_norm's
        rule); returns that norm before clipping. One process: clip_grad_norm itself."""
        if self.sync is None:
            return clip_grad_norm(self.params, max_norm)
        self.sync.finish()
        if self.config.zero:
            return self.optimizer.clip_grad_norm(max_norm)
        return clip_grad_norm(self.params, max_norm)

    def optimizer_to_save(self, step):
        """Collective, before each checkpoint (after `step` steps): checks that every rank holds the
        same weights (a CRC-32 of their bytes; rank 0 raises if not, which stops every rank), and
        returns what rank 0 hands to save_checkpoint (ZeRO: the moments gathered from every rank,
        in the single-process format; None on the other ranks)."""
        if self.sync is not None:
            self._check_replicas(step)
        if not self.config.zero:
            return self.optimizer
        state = self.optimizer.state_dict()
        return SavedOptimizer(state) if state is not None else None

    def _check_replicas(self, step):
        crc = 0
        for p in self.sync.layout.params:
            crc = zlib.crc32(np.ascontiguousarray(p.data).view(np.uint8), crc)
        crcs = self.comm.allgather_object(crc)
        if len(set(crcs)) > 1 and self.is_root:
            raise RuntimeError(f"data parallel: the ranks' weights differ after step {step} (CRC-32 per rank: "
                               f"{', '.join(hex(c) for c in crcs)}); the replicas must stay bit-identical")

    def optimizer_state_bytes(self):
        """Bytes of optimizer state this rank keeps (about 1/N of the whole with ZeRO)."""
        if self.config.zero:
            return self.optimizer.state_bytes()
        return sum(v.nbytes for v in self.optimizer.state.values())


def merge_from_ranks(local, comm):
    """The union of every rank's {key: value} dict (picklable values), on every rank."""
    if comm.size == 1:
        return dict(local)
    merged = {}
    for part in comm.allgather_object(local):
        merged.update(part)
    return merged
