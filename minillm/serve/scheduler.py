"""Iteration-level scheduling: which requests run in the next step, and how many of their tokens.

Every step, oldest request first (by arrival):
  1. each running request gets the tokens it still needs in the cache (1 for a decode step, a chunk
     of its prompt for a prefill), within a budget of max_step_tokens per step, so a long prompt is
     prefilled in chunks between other requests' decode steps instead of stalling them;
  2. blocks for those tokens come from the pool; when none is left the newest running request is
     preempted: its blocks are freed and it waits again at the head of the queue, to be recomputed
     from its tokens later (its sampled tokens and its generator stay, so its answer is the same);
  3. waiting requests join while the batch has room (max_batch) and tokens are left in the budget,
     first taking the blocks of their prompt's prefix found in the prefix cache.
Requests leave the batch at any step (finished, cancelled, timed out): Scheduler.remove.
"""
import bisect
from collections import deque

from .blocks import chain_hashes


class Scheduler:
    def __init__(self, blocks, max_batch=16, max_step_tokens=128):
        if max_batch < 1 or max_step_tokens < 1:
            raise ValueError(f"Scheduler: max_batch and max_step_tokens must be >= 1, got {max_batch} and "
                             f"{max_step_tokens}")
        self.blocks, self.max_batch, self.max_step_tokens = blocks, max_batch, max_step_tokens
        self.waiting = deque()
        self.running = []               # sorted by (arrival, id): the newest is last
        self.preemptions = 0

    def add(self, request):
        self.waiting.append(request)

    def remove(self, request):
        """Take a request out (finished, cancelled, failed) and free its blocks at once."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._free(request)

    def schedule(self):
        """[(request, number of its tokens to compute this step), ...], oldest request first."""
        plan, budget = [], self.max_step_tokens
        for request in list(self.running):
            if request not in self.running:                # preempted in this loop
                continue
            n = min(len(request.tokens) - request.computed, budget)
            if n <= 0:
                continue
            while not self._reserve(request, request.computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is request:
                    break
            else:
                plan.append((request, n))
                budget -= n
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            request = self.waiting[0]
            self._take_prefix(request)
            n = min(len(request.tokens) - request.computed, budget)
            if not self._reserve(request, request.computed + n):
                self._free(request)                        # its prefix blocks wait in the cache
                break
            self.waiting.popleft()
            self.blocks.prefix_hits += request.hashed
            request.cached_prompt_tokens = request.computed
            bisect.insort(self.running, request, key=lambda r: (r.arrival, r.id))
            plan.append((request, n))
            budget -= n
        return plan

    def _take_prefix(self, request):
        """The cached blocks of the request's longest cached prefix (all but its last token: that one
        must run to give logits)."""
        bs = self.blocks.block_size
        hashes = chain_hashes(request.tokens[:len(request.tokens) - 1], bs)
        taken = self.blocks.take_cached(hashes)
        self.blocks.prefix_hits -= len(taken)              # counted when the request is admitted
        request.blocks, request.block_hashes = taken, hashes[:len(taken)]
        request.computed = request.hashed = len(taken)
        request.computed *= bs

    def _reserve(self, request, length):
        """Blocks for `length` positions of request, or False (and nothing taken) when too few are free."""
        need = -(-length // self.blocks.block_size) - len(request.blocks)
        if need > self.blocks.num_free:
            return False
        request.blocks += [self.blocks.allocate() for _ in range(need)]
        return True

    def _preempt(self, request):
        self.running.remove(request)
        self._free(request)
        request.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(request)

    def _free(self, request):
        self.blocks.release(request.blocks)
        request.blocks, request.block_hashes = [], []
        request.computed = request.hashed = 0
