"""Other tools' files: GGUF (llama.cpp) and Hugging Face safetensors models, their tokenizers and chat
templates, in and out.

    model, tokenizer = load_pretrained("smollm2-135m-instruct")   # or a .gguf, an HF or minillm directory
    export_gguf(model, tokenizer, "model.gguf", scheme="q8_0")
    export_hf(model, tokenizer, "hf-model/")
"""
from .errors import FormatError
from .pretrained import KNOWN_MODELS, load_pretrained

__all__ = ["FormatError", "KNOWN_MODELS", "load_pretrained"]
