"""The serving engine: requests in, tokens out, one batched model step at a time.

    engine = Engine(model, tokenizer, EngineConfig(num_blocks=256, block_size=16, max_batch=16))
    outputs = engine.generate([prompt_ids, ...], SamplingParams(max_tokens=32, temperature=0))

or, from other threads (the HTTP server), engine.start() and engine.add_request(ids, params,
on_event) / engine.cancel(request): on_event(request, "token" | "finished") is called on the
engine's thread as tokens come.

One step (Engine.step): the scheduler picks the requests and their token counts (scheduler.py);
their tokens are packed into one row, ids (1, N), with each token's position, its block and slot
in the paged cache (paged_cache.StepLayout); DecoderLM.infer runs once on it, every attention
layer reading the KV cache through the block tables, with logits only at the last token of each
request whose tokens are now all cached; each of those requests samples its next token with its
own generator (generate.sample_next), finishes or goes on. Full blocks are registered in the
prefix cache as they fill. A step that raises fails only the requests in it; the engine goes on.
"""
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from ..generate import sample_next
from .blocks import BlockManager
from .paged_cache import PagedKVCache, StepLayout
from .request import Request, SamplingParams, TokenOut
from .scheduler import Scheduler


@dataclass
class EngineConfig:
    num_blocks: int = 512          # KV-cache blocks in the pool (each block_size positions of every layer)
    block_size: int = 16
    max_batch: int = 16            # requests running at once
    max_step_tokens: int = 128     # tokens computed per step (decode tokens + prefill chunks)


class Engine:
    def __init__(self, model, tokenizer, config=None):
        self.model, self.tokenizer = model, tokenizer
        self.config = c = config or EngineConfig()
        self.blocks = BlockManager(c.num_blocks, c.block_size)
        self.scheduler = Scheduler(self.blocks, c.max_batch, c.max_step_tokens)
        self.cache = PagedKVCache.for_model(model, c.num_blocks, c.block_size)
        self.context = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.stats = dict(steps=0, tokens_computed=0, tokens_generated=0, requests_finished=0, step_errors=0,
                          last_batch=0)
        self._lock = threading.Condition()
        self._incoming, self._cancelled = [], []
        self._thread, self._stop = None, False

    # ---- requests

    def add_request(self, prompt_ids, params=None, on_event=None):
        """Queue a request (thread-safe); ValueError for what it could never serve."""
        params = (params or SamplingParams()).check()
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("the prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if len(ids) >= self.context:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context is {self.context}, "
                             f"so it must be shorter to leave room for an answer")
        need = -(-min(len(ids) + params.max_tokens, self.context) // self.config.block_size)
        if need > self.config.num_blocks:
            raise ValueError(f"prompt + max_tokens need {need} KV blocks but the cache has "
                             f"{self.config.num_blocks}; lower max_tokens or start with more --kv-blocks")
        request = Request(ids, params, self.tokenizer, time.monotonic(), on_event)
        with self._lock:
            self._incoming.append(request)
            self._lock.notify()
        return request

    def cancel(self, request):
        """End a request (thread-safe): at the next step it leaves the batch and its blocks are freed."""
        with self._lock:
            self._cancelled.append(request)
            self._lock.notify()

    @property
    def num_waiting(self):
        return len(self.scheduler.waiting) + len(self._incoming)

    @property
    def num_running(self):
        return len(self.scheduler.running)

    def has_work(self):
        return bool(self.scheduler.waiting or self.scheduler.running or self._incoming or self._cancelled)

    # ---- one step

    def step(self):
        """Admit, cancel, time out; run one batched model step. Returns the number of tokens computed."""
        self._take_incoming()
        plan = self.scheduler.schedule()
        self.stats["last_batch"] = len(plan)
        if not plan:
            return 0
        try:
            self._run(plan)
        except Exception as error:                              # fail this step's requests, keep serving
            self.stats["step_errors"] += 1
            message = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            for request, _ in plan:
                if not request.finished:
                    request.finish("error", message)
                    self._finish(request)
        self.stats["steps"] += 1
        return sum(n for _, n in plan)

    def _take_incoming(self):
        with self._lock:
            incoming, self._incoming = self._incoming, []
            cancelled, self._cancelled = self._cancelled, []
        for request in incoming:
            self.scheduler.add(request)
        for request in cancelled:
            if request.finished:
                continue
            request.finish("cancelled")
            self._finish(request)
        now = time.monotonic()
        for request in list(self.scheduler.waiting) + list(self.scheduler.running):
            t = request.params.timeout
            if t is not None and now - request.arrival > t:
                request.finish("timeout")
                self._finish(request)

    def _run(self, plan):
        bs = self.config.block_size
        ids, positions, seq_of, slot_blocks, logit_rows, sampled = [], [], [], [], [], []
        width = max(len(r.blocks) for r, _ in plan)
        tables = np.zeros((len(plan), width), np.int64)
        for row, (request, n) in enumerate(plan):
            tokens, start = request.tokens, request.computed
            tables[row, :len(request.blocks)] = request.blocks
            ids += tokens[start:start + n]
            positions += range(start, start + n)
            seq_of += [row] * n
            slot_blocks += [request.blocks[p // bs] for p in range(start, start + n)]
            if start + n == len(tokens):                        # all its tokens cached: it samples
                logit_rows.append(len(ids) - 1)
                sampled.append(request)
        positions = np.array(positions, np.int64)
        layout = StepLayout(np.array(slot_blocks, np.int64), positions % bs, tables, np.array(seq_of, np.int64),
                            positions)
        logits = self.model.infer(np.array([ids]), positions[None], caches=self.cache.layers(layout),
                                  logit_rows=logit_rows or [0])[0]               # (len(logit_rows), V)
        for request, n in plan:
            request.computed += n
            self._register_full_blocks(request)
            self.stats["tokens_computed"] += n
        for row, request in enumerate(sampled):
            try:
                request.append(self._sample(request, logits[row]), self.context)
            except Exception as error:                          # its sampling or its text failed: it alone ends
                traceback.print_exc()
                request.finish("error", f"{type(error).__name__}: {error}")
                self._finish(request)
                continue
            self.stats["tokens_generated"] += 1
            if request.first_token_time is None:
                request.first_token_time = time.monotonic()
            self._emit(request, "token")
            if request.finished:
                self._finish(request)

    def _register_full_blocks(self, request):
        """Full blocks whose keys and values are now all computed join the prefix cache."""
        bs, tokens = self.config.block_size, None
        while (request.hashed + 1) * bs <= request.computed:
            i = request.hashed
            if i >= len(request.block_hashes):
                tokens = tokens or request.tokens
                parent = request.block_hashes[-1] if request.block_hashes else None
                request.block_hashes.append(hash((parent, tuple(tokens[i * bs:(i + 1) * bs]))))
            self.blocks.register(request.blocks[i], request.block_hashes[i])
            request.hashed += 1

    def _sample(self, request, logits):
        """The request's next token from its logits (V,), with its own generator."""
        p = request.params
        token = int(sample_next(logits[None], p.temperature, p.top_k, p.top_p if p.top_p < 1 else None,
                                rng=request.rng)[0])
        logprob, top = 0.0, []
        if p.logprobs is not None:
            z = logits.astype(np.float64)
            logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
            logprob = float(logp[token])
            best = np.argsort(-logp)[:p.logprobs]
            top = [(int(i), float(logp[i])) for i in best]
        return TokenOut(token, logprob, top)

    def _finish(self, request):
        request.end_time = time.monotonic()
        self.scheduler.remove(request)
        self.stats["requests_finished"] += 1
        self._emit(request, "finished")

    def _emit(self, request, kind):
        if request.on_event is not None:
            try:
                request.on_event(request, kind)
            except Exception:                                   # a listener's failure is not the engine's
                traceback.print_exc()

    # ---- running

    def generate(self, prompts, params=None):
        """Serve a list of prompts (token-id lists) to the end on this thread; their Requests, in order."""
        requests = [self.add_request(p, params) for p in prompts]
        while not all(r.finished for r in requests):
            self.step()
        return requests

    def start(self):
        """Run steps on a background thread until stop()."""
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="minillm-engine", daemon=True)
        self._thread.start()

    def stop(self):
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self):
        while True:
            with self._lock:
                while not self._stop and not self.has_work():
                    self._lock.wait()
                if self._stop:
                    return
            self.step()
