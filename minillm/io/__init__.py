"""Other tools' files: GGUF (llama.cpp) and Hugging Face safetensors models, their tokenizers and chat
templates, in and out.

    read_gguf(path), read_hf(directory)        # config, weights and tokenizer of a file (minillm.load_pretrained
                                               # builds the model from them: minillm/pretrained.py)
    export_gguf(model, tokenizer, "model.gguf", scheme="q8_0")
    export_hf(model, tokenizer, "hf-model/")
"""
from .errors import FormatError
from .gguf_read import read_gguf
from .gguf_write import export_gguf
from .hf import export_hf, read_hf

__all__ = ["FormatError", "read_gguf", "export_gguf", "read_hf", "export_hf"]
