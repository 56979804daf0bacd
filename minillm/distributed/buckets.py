"""Gradients summed over the ranks, bucket by bucket, while backward is still running.

The parameters are laid end to end in one flat vector in the reverse of the model's order (the
output head first, the embeddings last), which is roughly the order in which backward finishes
their gradients, and the vector is cut into buckets of about `bucket_bytes`. In a rank's last
backward pass of a step, each parameter's gradient is copied into its place in the flat buffer the
moment it is final (minillm.autograd.grad_ready_hook); when every parameter of a bucket is in, that
bucket's sum over the ranks starts (a non-blocking all-reduce), and the rest of backward runs on
while it travels. MPI moves a non-blocking collective along only inside MPI calls, so every hook
call also tests the buckets in flight. finish() waits for the last ones.

Two ways to sum:
  replicated (plain data parallelism): all-reduce; afterwards every rank holds the whole summed
      gradient and p.grad is a view into the flat buffer.
  sharded (ZeRO-1): reduce-scatter; rank r receives only the sum of its own contiguous slice of the
      flat vector (`shard_grad`), which is all its share of the optimizer needs. p.grad is None.

A parameter that got no gradient on any rank (an MoE expert no token chose) keeps p.grad None, so
the optimizer skips it exactly as it would in one process.
"""
from contextlib import contextmanager

import numpy as np

from ..autograd import grad_ready_hook


class FlatLayout:
    """Where each parameter lives in the flat vector, and the buckets it is cut into.

    params: [(name, Parameter)] in flat order. offsets[i]: start of params[i]; buckets: list of
    (start, stop, [parameter indices]); a parameter is never split, so one larger than a bucket
    gets a bucket of its own.
    """

    def __init__(self, named_params, bucket_bytes):
        self.names = [name for name, _ in named_params]
        self.params = [p for _, p in named_params]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"data parallel: all parameters must have one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.sizes = [p.size for p in self.params]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.total = int(sum(self.sizes))
        per_bucket = max(1, int(bucket_bytes) // self.dtype.itemsize)
        self.buckets, members, filled = [], [], 0
        for i, n in enumerate(self.sizes):
            if members and filled + n > per_bucket:
                self.buckets.append(self._bucket(members))
                members, filled = [], 0
            members.append(i)
            filled += n
        if members:
            self.buckets.append(self._bucket(members))
        self.bucket_of = [b for b, (_, _, members) in enumerate(self.buckets) for _ in members]

    def _bucket(self, members):
        return (self.offsets[members[0]], self.offsets[members[-1]] + self.sizes[members[-1]], members)

    def shard_counts(self, size):
        """Elements of the flat vector each of `size` ranks owns: contiguous, as equal as can be."""
        return [(r + 1) * self.total // size - r * self.total // size for r in range(size)]

    def shard(self, rank, size):
        """(start, stop) of rank's slice of the flat vector."""
        return rank * self.total // size, (rank + 1) * self.total // size

    def segments(self, start, stop):
        """The parts of parameters inside [start, stop): (param index, lo, hi) in the parameter's own
        flattened coordinates; the part sits at flat[offsets[i] + lo : offsets[i] + hi]."""
        out = []
        for i, (o, n) in enumerate(zip(self.offsets, self.sizes)):
            lo, hi = max(start, o), min(stop, o + n)
            if lo < hi:
                out.append((i, lo - o, hi - o))
        return out

    def view(self, flat, i):
        """Parameter i's piece of a flat vector, in the parameter's shape (a view, no copy)."""
        return flat[self.offsets[i]:self.offsets[i] + self.sizes[i]].reshape(self.params[i].shape)


class GradientSync:
    """Sum of the gradients over the ranks: all-reduced (replicated), or reduce-scattered onto
    each rank's slice of the flat vector (sharded=True, for the ZeRO-1 optimizer). overlap: start
    buckets during backward; otherwise one collective over the whole vector after it."""

    def __init__(self, layout, comm, sharded=False, overlap=True):
        self.layout, self.comm, self.sharded, self.overlap = layout, comm, sharded, overlap
        self.flat = np.zeros(layout.total, layout.dtype)
        self.index = {id(p): i for i, p in enumerate(layout.params)}
        if sharded:
            self.shard_start, self.shard_stop = layout.shard(comm.rank, comm.size)
            self.shard_grad = np.zeros(self.shard_stop - self.shard_start, layout.dtype)
        self.present = np.ones(len(layout.params), bool)      # got a gradient on some rank this step
        self._reset()

    def _reset(self):
        self.copied = np.zeros(len(self.layout.params), bool)
        self.waiting = [len(members) for _, _, members in self.layout.buckets]   # params not yet in
        self.requests = [None] * len(self.layout.buckets)
        self.in_flight = []                                               # started, not seen complete

    @contextmanager
    def backward(self, final):
        """Around each backward pass of a step; final: this rank's last one of the step, where the
        buckets' sums start as their gradients become final (when overlapping)."""
        if not (final and self.overlap):
            yield
            return
        with grad_ready_hook(self._grad_ready):
            yield

    def _grad_ready(self, tensor):
        i = self.index.get(id(tensor))
        if i is None or self.copied[i]:
            return
        self._copy_in(i)
        b = self.layout.bucket_of[i]
        self.waiting[b] -= 1
        if self.waiting[b] == 0:
            self._launch(b)
            self.in_flight.append(self.requests[b])
        self.in_flight = [request for request in self.in_flight if not request.test()]   # drives them along

    def _copy_in(self, i):
        grad = self.layout.params[i].grad
        view = self.layout.view(self.flat, i)
        if grad is None:
            view[...] = 0
        else:
            view[...] = grad
        self.copied[i] = True

    def _launch(self, b):
        start, stop, _ = self.layout.buckets[b]
        if not self.sharded:
            self.requests[b] = self.comm.iallreduce(self.flat[start:stop])
            return
        counts = [max(0, min(stop, hi) - max(start, lo)) for lo, hi in
                  (self.layout.shard(r, self.comm.size) for r in range(self.comm.size))]
        lo = max(start, self.shard_start) - self.shard_start
        recv = self.shard_grad[lo:lo + counts[self.comm.rank]]
        self.requests[b] = self.comm.ireduce_scatter(self.flat[start:stop], recv, counts)

    def finish(self):
        """Wait for every bucket's sum (starting those backward did not: all of them when not
        overlapping, and those holding a parameter the last backward pass did not reach)."""
        params = self.layout.params
        local = np.array([p.grad is not None for p in params], np.float64)
        if self.overlap:
            for b, (_, _, members) in enumerate(self.layout.buckets):
                if self.requests[b] is None:
                    for i in members:
                        if not self.copied[i]:
                            self._copy_in(i)
                    self._launch(b)
            for request in self.requests:
                request.wait()
        else:                                                # one collective over the whole vector
            for i in range(len(params)):
                self._copy_in(i)
            if self.sharded:
                self.comm.ireduce_scatter(self.flat, self.shard_grad, self.layout.shard_counts(self.comm.size)).wait()
            else:
                self.comm.allreduce(self.flat)
        self.comm.allreduce(local)
        self.present = local > 0
        for i, p in enumerate(params):
            p.grad = self.layout.view(self.flat, i) if self.present[i] and not self.sharded else None
        self._reset()
