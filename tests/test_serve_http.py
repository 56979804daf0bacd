"""The HTTP server against the official `openai` client and raw httpx, on loopback with a tiny model:
streamed equals non-streamed; a seed gives the same text alone or batched with others; n, logprobs,
usage, stop; /v1/models, /health, /metrics; OpenAI-shaped errors, 429 with Retry-After, timeouts,
a disconnecting client's request cancelled and its blocks freed, the server surviving a failing request."""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from minillm.generate import generate  # noqa: E402
from minillm.serve import EngineConfig  # noqa: E402
from minillm.serve.app import create_app  # noqa: E402
from minillm.serve.served import ServedModel  # noqa: E402

from serve_helpers import running_server, tiny_model  # noqa: E402

CONFIG = EngineConfig(num_blocks=128, block_size=8, max_batch=8, max_step_tokens=64)


@pytest.fixture(scope="module")
def server():
    model, tokenizer = tiny_model()
    app = create_app(lambda: {"tiny": ServedModel("tiny", model, tokenizer, CONFIG)})
    with running_server(app) as url:
        yield url, app.state.minillm, openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_streamed_completion_equals_the_whole_one(server):
    url, state, client = server
    whole = client.completions.create(model="tiny", prompt="hello there", max_tokens=12, temperature=0)
    pieces = list(client.completions.create(model="tiny", prompt="hello there", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    served = state.served["tiny"]
    want = generate(served.model, [served.prompt_ids("hello there")], 12, temperature=0)[0]
    assert whole.choices[0].text == served.tokenizer.decode(want)
    assert whole.usage.prompt_tokens == 11 and whole.usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length" == pieces[-1].choices[0].finish_reason


def test_streamed_chat_equals_the_whole_one_with_usage(server):
    url, state, client = server
    messages = [{"role": "user", "content": "say hi"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and whole.choices[0].message.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.prompt_tokens == len("user: say hi\nassistant:")


def test_a_seed_gives_the_same_text_alone_and_among_concurrent_requests(server):
    url, state, client = server

    def ask(prompt, seed):
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=1.0, seed=seed
                                         ).choices[0].text

    alone = ask("once upon", 7)
    with ThreadPoolExecutor(6) as pool:
        others = [pool.submit(ask, f"prompt {c}", i) for i, c in enumerate("abcde")]
        batched = pool.submit(ask, "once upon", 7)
        assert batched.result() == alone
        [o.result() for o in others]
    assert ask("once upon", 8) != alone


def test_n_choices_are_the_seeds_that_follow(server):
    url, state, client = server
    both = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1.0, seed=3, n=2)
    second = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1.0, seed=4)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].text == second.choices[0].text
    assert both.usage.completion_tokens == 16


def test_logprobs_and_stop(server):
    url, state, client = server
    out = client.completions.create(model="tiny", prompt="the cat", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.tokens) == 6
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) == 3 for t in lp.top_logprobs)
    assert all(max(t.values()) >= v - 1e-9 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    text = out.choices[0].text
    cut = client.completions.create(model="tiny", prompt="the cat", max_tokens=6, temperature=0, stop=[text[2:4]])
    assert cut.choices[0].text == text[:text.find(text[2:4])] and cut.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=3,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)


def test_models_health_metrics_and_prefix_hits(server):
    url, state, client = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    system = "you are a very terse assistant. answer in one word."
    for question in ("why?", "how?"):
        client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": system},
                                                               {"role": "user", "content": question}],
                                       max_tokens=2, temperature=0)
    metrics = httpx.get(url + "/metrics").text
    hits = [line for line in metrics.splitlines() if line.startswith('minillm_prefix_cache_hits_total{model="tiny"}')]
    assert hits and float(hits[0].split()[-1]) >= 6          # the shared 'system: ...' blocks of 8
    for name in ("minillm_requests_total", "minillm_kv_blocks_in_use", "minillm_queue_length", "minillm_batch_size",
                 "minillm_time_to_first_token_seconds_bucket", "minillm_generation_tokens_total"):
        assert name in metrics


def test_errors_have_openai_shape(server):
    url, state, client = server
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="a", temperature=5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="a")
    with pytest.raises(openai.BadRequestError, match="needs an encoder"):
        client.embeddings.create(model="tiny", input="a")
    bad = httpx.post(url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    long = httpx.post(url + "/v1/completions", json={"prompt": "a" * 200})
    assert long.status_code == 400 and "context is 128" in long.json()["error"]["message"]


def test_a_full_queue_answers_429_with_retry_after(server):
    url, state, client = server
    state.max_queue = 0
    try:
        r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2})
    finally:
        state.max_queue = 64
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"


def test_a_request_past_its_timeout_gets_504(server):
    url, state, client = server
    state.request_timeout = 0.0
    try:
        r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 50})
    finally:
        state.request_timeout = 600.0
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


def test_a_disconnected_stream_is_cancelled_and_its_blocks_freed(server):
    url, state, client = server
    engine = state.served["tiny"].engine
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "go", "max_tokens": 120, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break                                            # one chunk, then hang up
    deadline = time.monotonic() + 10
    while engine.num_running or engine.blocks.num_used:
        assert time.monotonic() < deadline, "the request went on after its client left"
        time.sleep(0.02)
    metrics = httpx.get(url + "/metrics").text
    assert 'minillm_requests_total{endpoint="completions",model="tiny",outcome="cancelled"} 1.0' in metrics


def test_the_server_survives_a_failing_request(server, monkeypatch):
    url, state, client = server
    model = state.served["tiny"].model
    real = model.infer
    monkeypatch.setattr(model, "infer", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3})
    assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
    monkeypatch.setattr(model, "infer", real)
    assert client.completions.create(model="tiny", prompt="a", max_tokens=3).usage.completion_tokens == 3


def test_health_is_503_while_the_model_loads():
    model, tokenizer = tiny_model()
    release = threading.Event()

    def load():
        release.wait(10)
        return {"tiny": ServedModel("tiny", model, tokenizer, CONFIG)}

    with running_server(create_app(load), wait_ready=False) as url:
        loading = httpx.get(url + "/health")
        refused = httpx.post(url + "/v1/completions", json={"prompt": "a"})
        release.set()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ok = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert loading.status_code == 503 and loading.json()["status"] == "loading"
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
    assert ok.status_code == 200 and json.loads(ok.text)["usage"]["completion_tokens"] == 2
