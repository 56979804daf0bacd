"""A server on loopback for the HTTP tests: a tiny model made here, uvicorn on a free port, in a thread."""
import contextlib
import socket
import threading
import time

import numpy as np

from minillm.models import DecoderLM, ModelConfig
from minillm.tokenizers.char import CharTokenizer

CHARS = " !.:?\nabcdefghijklmnopqrstuvwxyz"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def tiny_model(seed=0, n_embd=32, n_layer=2):
    tokenizer = CharTokenizer(sorted(CHARS))
    tokenizer.chat_template = TEMPLATE
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=n_layer, n_head=4, n_embd=n_embd,
                         init_std=0.3, norm="rmsnorm", activation="swiglu", positions="rope", n_kv_head=2, bias=False)
    return DecoderLM(config, rng=np.random.default_rng(seed), dtype=np.float32).eval(), tokenizer


@contextlib.contextmanager
def running_server(app, wait_ready=True):
    """Serve app on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    import httpx
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    while wait_ready and httpx.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
