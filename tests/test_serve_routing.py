"""Routing between a small and a large model: the learned router fits, calibrates to a share of
large-model calls and round-trips through its file; the server's cascade and router answer with the
model the policy picks (their answers equal that model's own); `minillm serve`'s routing flags are
checked with one-line errors."""
import numpy as np
import pytest

from minillm.cli import main
from minillm.serve.routing import Cascade, LogisticRouter, mean_logprob
from minillm.serve.request import TokenOut


def clusters(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, 5)) + 2.0 * y[:, None] * np.array([1, -1, 0, 0, 0])
    return X, y


def test_the_router_learns_which_prompts_need_the_large_model():
    X, y = clusters()
    router = LogisticRouter().fit(X, y)
    p = router.prob(X)
    assert np.mean((p > 0.5) == y) > 0.9
    for share in (0.1, 0.3, 0.7):
        router.calibrate(X, share)
        assert abs(np.mean([router.use_large(x) for x in X]) - share) < 0.02
    assert all(router.calibrate(X, 1.0).use_large(x) for x in X[:5])


def test_a_router_file_round_trips(tmp_path):
    X, y = clusters()
    router = LogisticRouter().fit(X, y).calibrate(X, 0.4)
    router.save(tmp_path / "router.json")
    again = LogisticRouter.load(tmp_path / "router.json")
    np.testing.assert_allclose(again.prob(X), router.prob(X))
    assert again.threshold == router.threshold
    (tmp_path / "bad.json").write_text('{"w": [1]}')
    with pytest.raises(ValueError, match="not a router file"):
        LogisticRouter.load(tmp_path / "bad.json")


def test_the_cascade_escalates_under_its_threshold():
    class Done:
        outputs = [TokenOut(1, -0.5), TokenOut(2, -1.5)]
    assert mean_logprob(Done) == -1.0
    assert Cascade(-0.9).escalate(Done) and not Cascade(-1.1).escalate(Done)


def test_serve_refuses_routing_without_two_named_models(capsys):
    assert main(["serve", "--model", "x", "--route", "cascade"]) == 2
    assert "needs --model small=SOURCE and --model large=SOURCE" in capsys.readouterr().err
    assert main(["serve", "--model", "small=x", "--model", "large=y", "--route", "router"]) == 2
    assert "--route router needs --router FILE" in capsys.readouterr().err
    assert main(["serve", "--model", "a=x", "--model", "a=y"]) == 2
    assert "two models named 'a'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def routed():
    """A server with models "small" and "large" (cascade routing; tests change its dispatcher's policy)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("sse_starlette")
    pytest.importorskip("prometheus_client")
    pytest.importorskip("httpx")
    from minillm.serve import EngineConfig
    from minillm.serve.app import create_app
    from minillm.serve.served import ServedModel
    from serve_helpers import running_server, tiny_model
    config = EngineConfig(num_blocks=64, block_size=8, max_batch=4)
    small, tok = tiny_model(seed=1, n_embd=16)
    large, _ = tiny_model(seed=2, n_embd=32)
    served = {"small": ServedModel("small", small, tok, config), "large": ServedModel("large", large, tok, config)}
    app = create_app(lambda: served, route="cascade")
    with running_server(app) as url:
        yield url, app.state.minillm.dispatcher


def answers(url, model, prompt="hello", stream=False):
    import httpx
    r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 8,
                                                  "temperature": 0, "stream": stream}, timeout=30)
    assert r.status_code == 200, r.text
    if stream:
        import json
        return "".join(json.loads(line[5:])["choices"][0]["text"] for line in r.text.splitlines()
                       if line.startswith("data:") and "[DONE]" not in line)
    return r.json()["choices"][0]["text"]


@pytest.mark.parametrize("threshold, answerer", [(float("inf"), "large"), (float("-inf"), "small")])
def test_the_cascade_answers_with_the_model_its_threshold_picks(routed, threshold, answerer):
    url, dispatcher = routed
    dispatcher.route, dispatcher.cascade.threshold = "cascade", threshold
    direct = answers(url, answerer)
    assert answers(url, "auto") == direct == answers(url, "auto", stream=True)
    assert answers(url, "small") != answers(url, "large")           # the two models differ


def test_the_router_sends_prompts_to_the_model_it_picks(routed):
    url, dispatcher = routed
    D = dispatcher.served["small"].model.config.n_embd
    router = LogisticRouter().fit(np.random.default_rng(0).standard_normal((20, D)), np.arange(20) % 2)
    dispatcher.route, dispatcher.router = "router", router
    router.threshold = -np.inf                                      # every prompt to the large model
    assert answers(url, "auto") == answers(url, "large")
    router.threshold = np.inf                                       # none
    assert answers(url, "auto") == answers(url, "small")
    dispatcher.route = "cascade"
