"""AdamW with its moments split over the ranks: ZeRO stage 1 (Rajbhandari et al., 2020).

Plain data parallelism keeps the whole optimizer on every rank: for AdamW two float32 moments per
parameter, twice the model. Here rank r keeps m and v only for its contiguous slice of the flat
parameter vector (FlatLayout.shard: about 1/N of it). Each step:

    1. the gradients are reduce-scattered (GradientSync with sharded=True): rank r gets the sum
       over ranks of its slice only, g_r;
    2. the global gradient norm ||g|| = sqrt(sum over ranks of ||g_r||^2) (one scalar all-reduce),
       and every g_r is scaled by min(1, max_norm / ||g||), as clip_grad_norm does in one process;
    3. rank r runs AdamW's update (minillm.optim.AdamW, the same arithmetic element by element) on
       its slice of the parameters and moments;
    4. the updated slices are all-gathered, so every rank holds every parameter again.

Reduce-scatter + all-gather move the same bytes as one all-reduce, so sharding costs no extra
communication. state_dict() gathers the moments onto rank 0 in exactly the format AdamW saves
("<name>.m", "<name>.v" and the step count "<name>.step" for each parameter that has had a
gradient), so a sharded run resumes in
one process, and load_state_dict() takes that format from any run.
"""
import math

import numpy as np

from .. import kernels


class ZeroAdamW:
    """Drop-in for AdamW in the Trainer (lr, step(), zero_grad(), step_count, state_dict(), ...).

    adamw: the AdamW built for one process (its groups give each parameter's weight decay);
    sync: the sharded GradientSync whose shard_grad and present this reads.
    """

    def __init__(self, adamw, sync):
        self.sync, self.layout, self.comm = sync, sync.layout, sync.comm
        self.groups, self.lr, self.betas, self.eps = adamw.groups, adamw.lr, adamw.betas, adamw.eps
        self.step_count = adamw.step_count
        decay = {name: g["weight_decay"] for g in adamw.groups for name in g["params"]}
        if set(decay) != set(self.layout.names):
            raise ValueError("ZeroAdamW: the optimizer's parameters are not the model's")
        self.weight_decay = [decay[name] for name in self.layout.names]
        self.start, self.stop = sync.shard_start, sync.shard_stop
        self.segments = self.layout.segments(self.start, self.stop)      # (param, lo, hi) in this shard
        self.m = np.zeros(self.stop - self.start, self.layout.dtype)
        self.v = np.zeros_like(self.m)
        self.seen = np.zeros(len(self.layout.params), bool)              # has had a gradient: has state
        self.counts = np.zeros(len(self.layout.params), np.int64)        # AdamW's t, per parameter
        if adamw.state:
            self.load_state_dict(adamw.state_dict())

    def named_parameters(self):
        return zip(self.layout.names, self.layout.params)

    def zero_grad(self):
        for p in self.layout.params:
            p.grad = None

    def _local(self, i, lo, hi):
        """Where parameter i's elements [lo, hi) sit in this rank's shard arrays."""
        start = self.layout.offsets[i] + lo - self.start
        return slice(start, start + hi - lo)

    def clip_grad_norm(self, max_norm):
        """The global norm of the summed gradient (before clipping); scales this rank's slice."""
        g = self.sync.shard_grad.astype(np.float64)
        total = np.array([float(np.dot(g, g))])
        self.comm.allreduce(total)
        norm = math.sqrt(total[0])
        if max_norm and norm > max_norm and math.isfinite(norm):
            self.sync.shard_grad *= max_norm / (norm + 1e-6)
        return norm

    def step(self):
        """AdamW on this rank's slice (minillm.optim.AdamW: the same kernel, t counted per parameter),
        then all-gather."""
        self.step_count += 1
        b1, b2 = self.betas
        flat = self.sync.flat          # the reduced gradients are in shard_grad; reuse it for the gather
        self.seen |= self.sync.present
        self.counts[self.sync.present] += 1
        for i, lo, hi in self.segments:
            p = _flat_view(self.layout.params[i].data, self.layout.names[i])[lo:hi]
            if self.sync.present[i]:
                here = self._local(i, lo, hi)
                kernels.adamw_step(p, self.sync.shard_grad[here], self.m[here], self.v[here], self.lr, b1, b2,
                                   self.eps, self.weight_decay[i], int(self.counts[i]))
            o = self.layout.offsets[i]
            flat[o + lo:o + hi] = p
        self.comm.allgatherv(flat, self.layout.shard_counts(self.comm.size))
        for i, p in enumerate(self.layout.params):
            p.data[...] = self.layout.view(flat, i)

    def state_bytes(self):
        """Bytes of optimizer state this rank holds."""
        return self.m.nbytes + self.v.nbytes

    # ----- checkpoints: the full state, in AdamW's format
    def state_dict(self):
        """Collective (every rank calls it): the whole {"step", "state"} on rank 0, None elsewhere."""
        counts = self.layout.shard_counts(self.comm.size)
        full = {}
        for slot, local in (("m", self.m), ("v", self.v)):
            gathered = np.empty(self.layout.total, self.layout.dtype) if self.comm.rank == 0 else None
            self.comm.gatherv(local, gathered, counts)
            if self.comm.rank == 0:
                for i, name in enumerate(self.layout.names):
                    if self.seen[i]:
                        full[f"{name}.{slot}"] = self.layout.view(gathered, i).copy()
        if self.comm.rank == 0:
            for i, name in enumerate(self.layout.names):
                if self.seen[i]:
                    full[f"{name}.step"] = np.array([self.counts[i]], dtype=np.int64)
        return {"step": self.step_count, "state": full} if self.comm.rank == 0 else None

    def load_state_dict(self, state):
        """Take this rank's slice of a full AdamW state ({"step", "state": {"<name>.m": ...}})."""
        names = set(self.layout.names)
        unknown = sorted({k.rsplit(".", 1)[0] for k in state["state"]} - names)
        if unknown:
            raise ValueError(f"optimizer state names parameters the model does not have: {unknown[:5]}")
        self.step_count = int(state["step"])
        self.m[...] = 0
        self.v[...] = 0
        self.seen[...] = False
        self.counts[...] = 0
        for i, name in enumerate(self.layout.names):
            if f"{name}.m" in state["state"]:
                self.seen[i] = True
                # a state saved before t was kept per parameter: every earlier step counted
                count = state["state"].get(f"{name}.step")
                self.counts[i] = int(np.asarray(count).reshape(-1)[0]) if count is not None else self.step_count
        for i, lo, hi in self.segments:
            name = self.layout.names[i]
            for slot, local in (("m", self.m), ("v", self.v)):
                if f"{name}.{slot}" in state["state"]:
                    local[self._local(i, lo, hi)] = np.asarray(state["state"][f"{name}.{slot}"]).reshape(-1)[lo:hi]


def _flat_view(array, name):
    """array as a 1-D view (writes go to the parameter); a copy would silently lose the update."""
    if not array.flags.c_contiguous:
        raise ValueError(f"ZeroAdamW: parameter {name} is not C-contiguous; it cannot be updated in place")
    return array.reshape(-1)


class SavedOptimizer:
    """A gathered optimizer state that save_checkpoint can write (it reads step_count, state_dict())."""

    def __init__(self, state):
        self.step_count, self._state = state["step"], state

    def state_dict(self):
        return self._state
