"""The OpenAI-compatible HTTP app (FastAPI, Server-Sent Events through sse-starlette) over the engines.

    app = create_app(lambda: {"tiny": ServedModel("tiny", model, tokenizer)})
    uvicorn.run(app, host="127.0.0.1", port=8000)

POST /v1/completions, /v1/chat/completions (stream, n, logprobs, usage), /v1/embeddings (encoders:
float or base64, usage);
GET /v1/models, /health (503 while the models load), /metrics (Prometheus). The models load on a
thread at startup; each engine steps on its own thread, and hands tokens to the request's asyncio
queue (loop.call_soon_threadsafe). Admission: more than max_queue requests waiting gets 429 with
Retry-After; each request has a timeout; a client that disconnects is cancelled (its blocks freed
at the engine's next step). Errors have OpenAI's shape; an error in one request never stops the server.
Routing between a "small" and a "large" model (route="cascade" | "router") is in dispatch.py.
"""
import asyncio
import base64
import json
import threading
import traceback

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from . import protocol as P
from .dispatch import Dispatcher
from .metrics import Metrics
from .protocol import ApiError
from .served import InputTooLong, NotAnEncoder


class AppState:
    def __init__(self, load, max_queue, request_timeout, default_max_tokens, route, router, threshold):
        self.load, self.served, self.error = load, {}, None
        self.ready = threading.Event()
        self.max_queue, self.request_timeout, self.default_max_tokens = max_queue, request_timeout, default_max_tokens
        self.metrics = Metrics(self.served)
        self.dispatcher = Dispatcher(self.served, route, router, threshold)

    def load_models(self):
        try:
            for name, served in self.load().items():
                if served.engine is not None:
                    served.engine.start()
                self.served[name] = served
            self.ready.set()
        except Exception as error:               # /health says why
            traceback.print_exc()
            self.error = f"{type(error).__name__}: {error}"

    def stop(self):
        for served in self.served.values():
            if served.engine is not None:
                served.engine.stop()


def create_app(load, *, max_queue=64, request_timeout=600.0, default_max_tokens=16, route="fixed", router=None,
               threshold=-1.0):
    """The app; load() returns {name: ServedModel} and runs on a thread at startup."""
    state = AppState(load, max_queue, request_timeout, default_max_tokens, route, router, threshold)

    async def lifespan(app):
        threading.Thread(target=state.load_models, name="minillm-load", daemon=True).start()
        yield
        state.stop()

    app = FastAPI(title="minillm", lifespan=lifespan)
    app.state.minillm = state

    @app.exception_handler(ApiError)
    async def api_error(request, error):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request, error):
        traceback.print_exc()
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}: {error}", "server_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health():
        if state.ready.is_set():
            return {"status": "ok"}
        return JSONResponse({"status": "error" if state.error else "loading", "error": state.error},
                            status_code=503)

    @app.get("/v1/models")
    async def models():
        ready()
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "minillm"}
                                           for name in list(state.served) + state.dispatcher.virtual_names()]}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        ready()
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        served = state.dispatcher.named(body.get("model"))
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(400, "'input' must be a non-empty string or a non-empty list of non-empty strings",
                           param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
                           param="encoding_format")
        try:
            vectors, n = await asyncio.to_thread(served.embed, texts)
        except NotAnEncoder as error:
            raise ApiError(400, str(error), param="model", code="model_not_encoder") from None
        except InputTooLong as error:
            raise ApiError(400, str(error), param="input", code="context_length_exceeded") from None
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != vectors.shape[1]:
            raise ApiError(400, f"'dimensions': model {served.name!r} gives {vectors.shape[1]}-dimensional "
                                f"embeddings and cannot shorten them; leave 'dimensions' out", param="dimensions")
        encode = ((lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")) if encoding == "base64"
                  else (lambda v: v.tolist()))                  # base64: little-endian float32, as OpenAI sends
        return {"object": "list", "model": served.name, "usage": {"prompt_tokens": n, "total_tokens": n},
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]}

    def ready():
        if not state.ready.is_set():
            raise ApiError(503, "the model is still loading" if not state.error else f"loading failed: {state.error}",
                           "service_unavailable", headers={"Retry-After": "1"})

    async def read_json(request):
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    async def generate(request, chat):
        ready()
        body = await read_json(request)
        params, n, stream, include_usage = P.parse_sampling(body, state.default_max_tokens, chat)
        params.timeout = state.request_timeout
        endpoint = "chat" if chat else "completions"
        messages = P.parse_messages(body) if chat else None
        prompt = None if chat else P.parse_prompt(body)
        job = state.dispatcher.job(body.get("model"), messages, prompt, params, n, chat)
        waiting = sum(s.engine.num_waiting for s in state.served.values() if s.engine is not None)
        if waiting + n > state.max_queue:
            state.metrics.refused(job.name, endpoint, "queue_full")
            raise ApiError(429, f"the server has {waiting} requests waiting (at most {state.max_queue}); retry later",
                           "rate_limit_error", headers={"Retry-After": "1"})
        kind = "chat.completion" if chat else "text_completion"
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        events = job.start(asyncio.get_running_loop(), on_end=lambda r, name: state.metrics.observe(name, endpoint, r))
        if stream:
            return EventSourceResponse(stream_events(job, events, kind, rid, chat, include_usage),
                                       ping=15, sep="\n")
        return await whole_response(request, job, events, kind, rid, chat)

    async def whole_response(request, job, events, kind, rid, chat):
        texts, tokens, finish = [""] * job.n, [[] for _ in range(job.n)], [None] * job.n
        try:
            while None in finish:
                try:
                    index, piece, new_tokens, done = await asyncio.wait_for(events.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)
                    continue
                texts[index] += piece
                tokens[index] += new_tokens
                if done is not None:
                    finish[index] = done
        finally:
            job.cancel_unfinished()
        check_outcome(job)
        choice = P.chat_choice if chat else P.completion_choice
        logprobs = job.logprobs_builder(chat)
        choices = [choice(i, texts[i], P.finish_reason(finish[i]), logprobs(tokens[i])) for i in range(job.n)]
        return P.response(kind, rid, job.name, choices, P.usage(*job.usage()))

    async def stream_events(job, events, kind, rid, chat, include_usage):
        chunk_kind = kind + ".chunk" if chat else kind
        logprobs = job.logprobs_builder(chat)
        open_choices = set(range(job.n))
        try:
            if chat:
                for i in range(job.n):
                    yield json.dumps(P.response(chunk_kind, rid, job.name, [P.chat_delta(i, "", None, first=True)]))
            while open_choices:
                index, piece, new_tokens, done = await events.get()
                if done is not None and done not in ("stop", "length"):
                    check_outcome(job)
                if not piece and done is None:
                    continue
                reason = P.finish_reason(done) if done is not None else None
                choice = (P.chat_delta if chat else P.completion_choice)(index, piece, reason, logprobs(new_tokens))
                yield json.dumps(P.response(chunk_kind, rid, job.name, [choice]))
                if done is not None:
                    open_choices.discard(index)
            if include_usage:
                yield json.dumps(P.response(chunk_kind, rid, job.name, [], P.usage(*job.usage())))
            yield "[DONE]"
        except ApiError as error:
            yield json.dumps(error.body())
        finally:                                  # also when the client went away (the task is cancelled)
            job.cancel_unfinished()

    def check_outcome(job):
        if job.error is not None:
            raise ApiError(500, f"generation failed: {job.error}", "server_error")
        for r in job.requests:
            if r.finish_reason == "timeout":
                raise ApiError(504, f"the request took longer than {state.request_timeout} s", "timeout")
            if r.finish_reason == "error":
                raise ApiError(500, f"generation failed: {r.error}", "server_error")

    return app
