"""Writing a minillm model as a GGUF file (llama.cpp's format) through the gguf package's writer.

    export_gguf(model, tokenizer, "model.gguf", scheme="q8_0")     # f32 | f16 | q8_0 | q4_0 | q4_1

The model must be of the Llama or GPT-2 flavour (io/hf.py: family). The metadata are llama.cpp's
keys for that architecture; the tokenizer (byte-level BPE) goes in as tokens, token types and
merges (io/tokenizer.py). Tensor names and layouts are llama.cpp's: Llama's q and k rows permuted
for interleaved RoPE (layouts.py), GPT-2's q, k, v fused into attn_qkv and its tied head written
out again as output.weight (as llama.cpp's converter does and its GPT-2 loader expects).

Matrices take the scheme (if their width is a multiple of 32), vectors and GPT-2's position table
stay F32. Quantizing uses gguf's own quantizer, which is bit-exact with llama.cpp's. A weight that
is already quantized in the same scheme with fp16-exact scales (a model loaded from a GGUF file) is
written block for block, so loading a GGUF and writing it again gives the same tensors.

A minillm character tokenizer, which GGUF has no type for, is kept in minillm.tokenizer.chars so
minillm reads it back; other tools see a model without a vocabulary (tokenizer.ggml.model "none").
"""
import math
import os

import numpy as np

from ..nn.quantized import QuantizedWeights
from ..files import write_atomically
from .ggml_blocks import GGML_OF, arrays_to_blocks, fits_fp16
from .hf import family, float_weights
from .layouts import permute_rope_rows
from .tokenizer import gguf_tokenizer_fields

SCHEMES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
LLAMA_NAMES = {"norm1.weight": "attn_norm.weight", "norm2.weight": "ffn_norm.weight", "attn.wq.weight": "attn_q.weight",
               "attn.wk.weight": "attn_k.weight", "attn.wv.weight": "attn_v.weight",
               "attn.wo.weight": "attn_output.weight", "ffn.w_gate": "ffn_gate.weight", "ffn.w_up": "ffn_up.weight",
               "ffn.w_down": "ffn_down.weight"}
GPT2_NAMES = {f"{m}.{p}": f"{g}.{p}" for m, g in (("norm1", "attn_norm"), ("norm2", "ffn_norm"),
                                                  ("attn.wo", "attn_output"), ("ffn.fc", "ffn_up"),
                                                  ("ffn.proj", "ffn_down")) for p in ("weight", "bias")}
TOP_NAMES = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
             "norm_f.weight": "output_norm.weight",
             "norm_f.bias": "output_norm.bias", "lm_head.weight": "output.weight"}


def quantized_arrays(model):
    """{float parameter name: (scheme, arrays)} of model's quantized weights."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedWeights):
            float_name = name.removesuffix(".table") + ".weight" if name.endswith(".table") else name
            out[float_name] = (module.scheme, module.own_buffers())
    return out


def gguf_names(weights, config, arch):
    """[(GGUF name, minillm name or a list of names fused, row transform or None)] in file order."""
    plan = [(TOP_NAMES[n], n, None) for n in ("wte.weight", "wpe.weight") if n in weights]
    for i in range(config.n_layer):
        prefix = f"blocks.{i}."
        if arch == "llama":
            for ours, theirs in LLAMA_NAMES.items():
                heads = {"attn.wq.weight": config.n_head, "attn.wk.weight": config.n_kv_head or config.n_head}.get(ours)
                transform = (lambda w, h=heads: permute_rope_rows(w, h)) if heads else None
                plan.append((f"blk.{i}.{theirs}", prefix + ours, transform))
        else:
            for p in ("weight", "bias"):
                plan.append((f"blk.{i}.attn_qkv.{p}", [f"{prefix}attn.{h}.{p}" for h in ("wq", "wk", "wv")], None))
            plan += [(f"blk.{i}.{theirs}", prefix + ours, None) for ours, theirs in GPT2_NAMES.items()]
    plan += [(TOP_NAMES[n], n, None) for n in ("norm_f.weight", "norm_f.bias") if n in weights]
    if "lm_head.weight" in weights:
        plan.append(("output.weight", "lm_head.weight", None))
    elif arch == "gpt2":
        plan.append(("output.weight", "wte.weight", None))
    return plan


def _tensor(name, ours, transform, weights, quantized, scheme):
    """(array, raw GGML type) of one GGUF tensor."""
    from gguf import GGMLQuantizationType, quants
    if isinstance(ours, list):
        w = np.concatenate([weights[n] for n in ours])
    else:
        w = weights[ours]
    matrix = w.ndim == 2 and name != "position_embd.weight" and w.shape[1] % 32 == 0
    if not matrix or scheme == "f32":
        w = transform(w) if transform else w
        return np.ascontiguousarray(w, dtype=np.float32), GGMLQuantizationType.F32
    if scheme == "f16":
        w = transform(w) if transform else w
        return np.ascontiguousarray(w, dtype=np.float16), GGMLQuantizationType.F16
    kind = GGMLQuantizationType[GGML_OF[scheme]]
    have = quantized.get(ours) if isinstance(ours, str) else None
    if have is not None and have[0] == scheme and all(fits_fp16(have[1][k]) for k in ("scale", "min") if k in have[1]):
        arrays = {k: (transform(v) if transform else v) for k, v in have[1].items()}
        return arrays_to_blocks(scheme, arrays["q"], arrays["scale"], arrays.get("min")), kind
    w = transform(w) if transform else w
    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), kind), kind


def _rope_scaling_metadata(writer, config, arch):
    """ModelConfig.rope_scaling as llama.cpp's rope.scaling.* keys (linear and yarn; llama3 and
    freq_factors go in the rope_freqs tensor, see rope_freqs_tensor; dynamic has none)."""
    s = config.rope_scaling_config()
    if s is None or s.rope_type in ("llama3", "freq_factors"):
        return
    key = f"{arch}.rope.scaling."
    if s.rope_type not in ("linear", "yarn"):
        raise ValueError(f"export: GGUF metadata has no RoPE scaling {s.rope_type!r} (linear and yarn only)")
    writer.add_string(key + "type", s.rope_type)
    writer.add_float32(key + "factor", float(s.factor))
    if s.rope_type == "yarn":
        writer.add_uint32(key + "original_context_length", s.original_max_position_embeddings)
        writer.add_float32(key + "yarn_beta_fast", float(s.beta_fast))
        writer.add_float32(key + "yarn_beta_slow", float(s.beta_slow))
        if s.attention_factor is not None:
            writer.add_float32(key + "attn_factor", float(s.attention_factor) / (0.1 * math.log(s.factor) + 1.0))


def rope_freqs_tensor(config):
    """The rope_freqs tensor (D/2 float32 divisors, llama.cpp's name) of a llama3 or freq_factors
    scaling, else None."""
    from ..functional.rope_scaling import llama3_freq_factors
    s = config.rope_scaling_config() if config.positions == "rope" else None
    if s is None or s.rope_type not in ("llama3", "freq_factors"):
        return None
    D = config.n_embd // config.n_head
    factors = s.freq_factors if s.rope_type == "freq_factors" else llama3_freq_factors(D, config.rope_theta, s)
    return np.asarray(factors, dtype=np.float32)


def _metadata(writer, config, arch, scheme):
    from gguf import LlamaFileType
    c = config
    writer.add_uint32(f"{arch}.context_length", c.block_size)
    writer.add_uint32(f"{arch}.embedding_length", c.n_embd)
    writer.add_uint32(f"{arch}.block_count", c.n_layer)
    writer.add_uint32(f"{arch}.feed_forward_length", c.hidden_size)
    writer.add_uint32(f"{arch}.attention.head_count", c.n_head)
    if arch == "llama":
        writer.add_uint32(f"{arch}.attention.head_count_kv", c.n_kv_head or c.n_head)
        writer.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
        writer.add_uint32(f"{arch}.rope.dimension_count", c.n_embd // c.n_head)
        _rope_scaling_metadata(writer, c, arch)
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.norm_eps)
        writer.add_uint32(f"{arch}.vocab_size", c.vocab_size)
    else:
        writer.add_float32(f"{arch}.attention.layer_norm_epsilon", c.norm_eps)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
                  "q4_1": "MOSTLY_Q4_1"}
    writer.add_uint32("general.file_type", int(LlamaFileType[file_types[scheme]]))
    writer.add_uint32("general.quantization_version", 2)


def _add_field(writer, key, value):
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif value and isinstance(value[0], int):
        from gguf import GGUFValueType
        writer.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    else:
        writer.add_array(key, list(value))


def export_gguf(model, tokenizer, path, scheme="f32", name=None):
    """Write model and tokenizer to path as GGUF (atomically: a failed write leaves no file)."""
    try:
        from gguf import GGUFWriter
    except ImportError:
        raise ValueError("writing GGUF files needs the gguf package: pip install 'minillm[pretrained]'") from None
    if scheme not in SCHEMES:
        raise ValueError(f"export: scheme must be one of {SCHEMES}, got {scheme!r}")
    arch = family(model.config)
    weights, quantized = float_weights(model), quantized_arrays(model)
    fields = {}
    if tokenizer is not None and getattr(tokenizer, "kind", None) == "char":
        fields = {"tokenizer.ggml.model": "none", "minillm.tokenizer.chars": "".join(tokenizer.chars)}
    elif tokenizer is not None:
        fields = gguf_tokenizer_fields(tokenizer)
    if "tokenizer.ggml.tokens" in fields and len(fields["tokenizer.ggml.tokens"]) > model.config.vocab_size:
        raise ValueError(f"export: the tokenizer has {len(fields['tokenizer.ggml.tokens'])} tokens, more than the "
                         f"model's {model.config.vocab_size}")
    tensors = [(gguf_name, *_tensor(gguf_name, ours, transform, weights, quantized, scheme))
               for gguf_name, ours, transform in gguf_names(weights, model.config, arch)]
    rope_freqs = rope_freqs_tensor(model.config)
    if rope_freqs is not None:
        tensors.append(("rope_freqs.weight", rope_freqs, None))

    def write(tmp):
        writer = GGUFWriter(tmp, arch)
        writer.add_string("general.name", name or os.path.splitext(os.path.basename(path))[0])
        _metadata(writer, model.config, arch, scheme)
        for key, value in fields.items():
            _add_field(writer, key, value)
        for gguf_name, array, kind in tensors:
            writer.add_tensor(gguf_name, array, raw_dtype=kind if array.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_atomically(path, write)
    return path
