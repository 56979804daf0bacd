"""Which model answers a request, and the bridge from its engine's thread to the app's event loop.

Dispatcher.job picks: the model the request names; with route "cascade" or "router", a request for
"auto" (or naming no model) goes to the models named "small" and "large" by the policy of
routing.py: the cascade runs the small model first and escalates a choice whose mean token
log-probability is under the threshold; the router picks one up front from the prompt's embedding.

A Job holds one engine request per choice (n of them, seeds seed, seed + 1, ...) and posts
(index, text piece, new tokens, finish reason or None) to an asyncio queue as tokens come, from
the engine's thread, through loop.call_soon_threadsafe.
"""
import asyncio
import dataclasses
import threading

from . import protocol as P
from .protocol import ApiError
from .routing import Cascade


class Dispatcher:
    def __init__(self, served, route="fixed", router=None, threshold=-1.0):
        if route not in ("fixed", "cascade", "router"):
            raise ValueError(f"route must be fixed, cascade or router, got {route!r}")
        if route == "router" and router is None:
            raise ValueError("route 'router' needs a fitted router (--router FILE)")
        self.served, self.route, self.router, self.cascade = served, route, router, Cascade(threshold)

    def virtual_names(self):
        return ["auto"] if self.route != "fixed" else []

    def named(self, name):
        if name in self.served:
            return self.served[name]
        if name is None:
            return next(iter(self.served.values()))
        raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(self.served)}",
                       param="model", code="model_not_found")

    def job(self, name, messages, prompt, params, n, chat):
        if self.route != "fixed" and name not in self.served and name in (None, "auto"):
            small, large = self.served.get("small"), self.served.get("large")
            if small is None or large is None:
                raise ApiError(500, "routing needs models named 'small' and 'large'", "server_error")
            if self.route == "cascade":
                return Job(name or "auto", [small, large], messages, prompt, params, n, chat, self.cascade)
            use_large = self.router.use_large(small.prompt_embedding(Job.ids_for(small, messages, prompt)))
            return Job(name or "auto", [large if use_large else small], messages, prompt, params, n, chat)
        served = self.named(name)
        if served.engine is None:
            raise ApiError(400, f"model {served.name!r} is an encoder; it serves /v1/embeddings only", param="model")
        return Job(served.name, [served], messages, prompt, params, n, chat)


class Job:
    """The n choices of one HTTP request; with a cascade, each choice may move to the second model."""

    def __init__(self, name, chain, messages, prompt, params, n, chat, cascade=None):
        self.name, self.chain, self.n, self.chat, self.cascade = name, chain, n, chat, cascade
        self.messages, self.prompt = messages, prompt
        self.want_logprobs = params.logprobs is not None
        if cascade is not None and params.logprobs is None:
            params = dataclasses.replace(params, logprobs=0)       # the cascade reads the log-probabilities
        self.params = params
        self.requests = [None] * n                   # the request answering each choice
        self.served = [chain[0]] * n
        self.error = None
        self._lock = threading.Lock()

    @staticmethod
    def ids_for(served, messages, prompt):
        try:
            return served.chat_ids(messages) if messages is not None else served.prompt_ids(prompt)
        except ValueError as error:
            raise ApiError(400, str(error)) from None

    def start(self, loop, on_end):
        self.loop, self.on_end, self.queue = loop, on_end, asyncio.Queue()
        for i in range(self.n):
            self._submit(i, 0)
        return self.queue

    def _post(self, *event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def _submit(self, index, step):
        served = self.chain[step]
        seed = None if self.params.seed is None else self.params.seed + index
        params = dataclasses.replace(self.params, seed=seed, stop_token_ids=served.stop_token_ids(self.chat))
        held = [] if step + 1 < len(self.chain) else None          # a cascade's first answer waits for its verdict
        sent = [0]

        def on_event(request, kind):
            new = request.outputs[sent[0]:]
            sent[0] = len(request.outputs)
            event = (index, request.take_text(), new, request.finish_reason if kind == "finished" else None)
            if kind == "finished":
                self.on_end(request, served.name)
            if held is None:
                self._post(*event)
                return
            held.append(event)
            if kind == "finished":
                if request.finish_reason in ("stop", "length") and self.cascade.escalate(request):
                    self._submit(index, step + 1)
                else:
                    for e in held:
                        self._post(*e)

        try:
            ids = self.ids_for(served, self.messages, self.prompt)
            request = served.engine.add_request(ids, params, on_event)
        except (ValueError, ApiError) as error:
            if step == 0:
                raise ApiError(400, str(error)) from None
            self.error = str(error)                                 # on the engine's thread: end the choice
            self._post(index, "", [], "error")
            return
        with self._lock:
            self.requests[index], self.served[index] = request, served

    def cancel_unfinished(self):
        with self._lock:
            for request, served in zip(self.requests, self.served):
                if request is not None and not request.finished:
                    served.engine.cancel(request)

    def usage(self):
        done = [r for r in self.requests if r is not None]
        prompt = len(done[0].prompt_ids) if done else 0
        cached = done[0].cached_prompt_tokens if done else 0
        return prompt, sum(len(r.outputs) for r in done), cached

    def logprobs_builder(self, chat):
        """tokens -> the logprobs block of a choice (None when the request asked for none)."""
        if not self.want_logprobs:
            return lambda tokens: None
        build = P.chat_logprobs if chat else P.completion_logprobs
        served = self.chain[-1] if len(self.chain) == 1 else self.chain[0]
        return lambda tokens: build(tokens, served.token_text)
