"""Reading GGUF files (llama.cpp's format) through the gguf package's reader.

    gguf = read_gguf("model.gguf")      # {"meta", "config", "weights", "types", "tokenizer", "path"}
    model = build_decoder(gguf["config"], gguf["weights"], path)

The reader memory-maps the file. Metadata becomes a ModelConfig (architecture "llama" or "gpt2";
head counts, width, depth, context length, RoPE base, norm epsilon, a tied head when the file has
no output.weight). Tensors, by type:

    F32                 a float32 view of the file (no copy)
    F16, BF16, K-quants, other block types   dequantized to float32 by gguf's NumPy dequantizer
    Q8_0, Q4_0, Q4_1    kept quantized: regrouped into minillm's q8_0 / q4_0 / q4_1 (ggml_blocks.py)

The q and k projections of a Llama file are in GGML's interleaved-RoPE row order and are put back
in rotate-half order (layouts.py); GPT-2's fused attn_qkv is cut into q, k, v.
"""
import math
import os

import numpy as np

from ..models import ModelConfig
from .build import Quantized, map_rows, split_rows
from .errors import FormatError
from .ggml_blocks import BLOCK_BYTES, SCHEME_OF, blocks_to_arrays
from .layouts import unpermute_rope_rows
from .tokenizer import tokenizer_from_gguf

ARCHITECTURES = ("llama", "gpt2")
MAGIC = b"GGUF"
LLAMA_TENSORS = {"attn_norm.weight": "norm1.weight", "ffn_norm.weight": "norm2.weight",
                 "attn_q.weight": "attn.wq.weight", "attn_k.weight": "attn.wk.weight",
                 "attn_v.weight": "attn.wv.weight", "attn_output.weight": "attn.wo.weight",
                 "ffn_gate.weight": "ffn.w_gate", "ffn_up.weight": "ffn.w_up", "ffn_down.weight": "ffn.w_down"}
GPT2_TENSORS = {f"{g}.{p}": f"{m}.{p}" for g, m in (("attn_norm", "norm1"), ("ffn_norm", "norm2"),
                                                    ("attn_output", "attn.wo"), ("ffn_up", "ffn.fc"),
                                                    ("ffn_down", "ffn.proj")) for p in ("weight", "bias")}
TOP_TENSORS = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
               "output_norm.weight": "norm_f.weight", "output_norm.bias": "norm_f.bias", "output.weight": "lm_head.weight"}


def _reader_class():
    from gguf import GGUFReader

    class Reader(GGUFReader):
        """GGUFReader over a plain ndarray view of its memory map: the reader slices the map once per
        metadata value (~100,000 times for a vocabulary), and numpy.memmap's per-slice bookkeeping
        made that five times slower. The view shares the map; nothing is copied."""

        def __setattr__(self, name, value):
            if name == "data" and isinstance(value, np.memmap):
                value = value.view(np.ndarray)
            super().__setattr__(name, value)

    return Reader


def open_reader(path):
    """gguf's GGUFReader on path, with a one-line FormatError for a file that is not a whole GGUF."""
    try:
        GGUFReader = _reader_class()
    except ImportError:
        raise FormatError("reading GGUF files needs the gguf package: pip install 'minillm[pretrained]'") from None
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise FormatError(f"{path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    try:
        reader = GGUFReader(path)
    except Exception as error:   # gguf raises ValueError, IndexError, struct errors... on a damaged file
        raise FormatError(f"{path}: damaged or truncated GGUF file ({type(error).__name__}: {error})") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size or t.data.nbytes != int(t.n_bytes):
            raise FormatError(f"{path}: truncated GGUF file (tensor {t.name} runs past the end of the file)")
    return reader


def metadata(reader):
    """{key: Python value} of the file's metadata (strings, numbers, bools, lists)."""
    out = {}
    for key, f in reader.fields.items():
        try:
            value = f.contents()
        except Exception as error:
            raise FormatError(f"metadata {key} cannot be read ({error})") from None
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _f32(value):
    """A float32 metadata value as the shortest decimal that is the same float32 (1e-06, not 9.99e-07)."""
    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def config_from_metadata(meta, vocab_size, tied, where):
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise FormatError(f"{where}: architecture {arch!r} is not supported; minillm loads {list(ARCHITECTURES)}")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise FormatError(f"{where}: metadata {arch}.{key} is missing")
        return value

    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    common = dict(vocab_size=vocab_size, block_size=int(get("context_length")), n_layer=int(get("block_count")),
                  n_head=n_head, n_embd=n_embd, d_ff=int(get("feed_forward_length")), tie_embeddings=tied)
    if n_head < 1 or n_embd % n_head:
        raise FormatError(f"{where}: width {n_embd} is not a multiple of {n_head} heads")
    D = n_embd // n_head
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        if f"{arch}.{key}" in meta and int(meta[f"{arch}.{key}"]) != D:
            raise FormatError(f"{where}: {arch}.{key} = {meta[f'{arch}.{key}']} differs from the head dim {D}; "
                              "minillm needs head_dim = width / heads with full rotary dims")
    rope_scaling = _rope_scaling(meta, arch, int(get("context_length")), where)
    try:
        if arch == "llama":
            return ModelConfig(**common, n_kv_head=int(get("attention.head_count_kv", n_head)), norm="rmsnorm",
                               activation="swiglu", positions="rope", bias=False,
                               rope_theta=_f32(get("rope.freq_base", 10000.0)), rope_scaling=rope_scaling,
                               norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)))
        return ModelConfig(**common, norm="layernorm", activation="gelu", positions="learned", bias=True,
                           norm_eps=_f32(get("attention.layer_norm_epsilon", 1e-5)))
    except ValueError as error:
        raise FormatError(f"{where}: the metadata describe an impossible model: {error}") from None


def _rope_scaling(meta, arch, context, where):
    """GGUF's rope.scaling.* metadata (llama.cpp's names) as ModelConfig.rope_scaling, or None.

    linear: factor; yarn: factor, original_context_length, yarn_beta_fast / yarn_beta_slow, attn_factor
    (llama.cpp's multiplier over yarn's 0.1 ln(factor) + 1, which HF's attention_factor includes).
    Llama 3's scaling lives in a rope_freqs tensor, not in metadata: see _with_rope_freqs."""
    key = f"{arch}.rope.scaling."
    kind = meta.get(key + "type", "none")
    factor = float(meta.get(key + "factor", 1.0))
    if kind in ("none", None) or factor == 1.0:
        return None
    values = {"rope_type": str(kind), "factor": factor}
    if kind == "yarn":
        values["original_max_position_embeddings"] = int(meta.get(key + "original_context_length", context))
        for name, ours in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if key + name in meta:
                values[ours] = float(meta[key + name])
        if float(meta.get(key + "attn_factor", 1.0)) != 1.0:
            values["attention_factor"] = float(meta[key + "attn_factor"]) * (0.1 * math.log(factor) + 1.0)
    elif kind != "linear":
        raise FormatError(f"{where}: RoPE scaling {kind!r} is not supported (linear and yarn are)")
    return values


def _with_rope_freqs(config, rope_freqs, where):
    """config with llama.cpp's rope_freqs tensor (one frequency divisor per rotary pair, how GGUF files
    carry Llama 3's scaling) as a freq_factors rope_scaling."""
    D = config.n_embd // config.n_head
    if config.positions != "rope" or isinstance(rope_freqs, Quantized) or rope_freqs.size != D // 2:
        raise FormatError(f"{where}: tensor rope_freqs.weight should hold {D // 2} floats, one per rotary pair of "
                          f"a rope model; got {getattr(rope_freqs, 'shape', None)}")
    if config.rope_scaling is not None:
        raise FormatError(f"{where}: the file has both rope.scaling metadata ({config.rope_scaling['rope_type']}) "
                          "and a rope_freqs tensor; minillm reads one RoPE scaling")
    values = {"rope_type": "freq_factors", "freq_factors": [float(v) for v in np.asarray(rope_freqs).reshape(-1)]}
    try:
        return ModelConfig(**{**config.to_dict(), "rope_scaling": values})
    except ValueError as error:
        raise FormatError(f"{where}: tensor rope_freqs.weight: {error}") from None


def read_tensor(t, where):
    """A tensor as a float32 array (a view for F32) or a Quantized weight; shape (rows, columns)."""
    kind = t.tensor_type.name
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))      # GGUF lists [columns, rows]
    if kind == "F32":
        return np.asarray(t.data).view(np.float32).reshape(shape)      # .view: numpy's own dtype object
    if kind in BLOCK_BYTES and len(shape) == 2:
        raw = np.asarray(t.data).view(np.uint8).reshape(shape[0], -1)
        return Quantized(SCHEME_OF[kind], blocks_to_arrays(raw, kind, shape[1]), shape, kind)
    from gguf import quants
    try:
        return quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False).reshape(shape)
    except (NotImplementedError, ValueError) as error:
        raise FormatError(f"{where}: tensor {t.name} has type {kind}, which cannot be read ({error})") from None


def minillm_weights(arch, tensors, config, where):
    """{float parameter name: weight} from {GGUF name: weight}, with RoPE rows and fused q/k/v undone."""
    weights = {}
    for name, value in tensors.items():
        if name in TOP_TENSORS:
            weights[TOP_TENSORS[name]] = value
            continue
        parts = name.split(".", 2)
        if parts[0] != "blk" or len(parts) < 3 or not parts[1].isdigit():
            raise FormatError(f"{where}: tensor {name} is not part of a {arch} model minillm knows")
        prefix, rest = f"blocks.{parts[1]}", parts[2]
        if arch == "llama" and rest in LLAMA_TENSORS:
            if rest == "attn_q.weight":
                value = map_rows(value, lambda w: unpermute_rope_rows(w, config.n_head))
            elif rest == "attn_k.weight":
                value = map_rows(value, lambda w: unpermute_rope_rows(w, config.n_kv_head or config.n_head))
            weights[f"{prefix}.{LLAMA_TENSORS[rest]}"] = value
        elif arch == "gpt2" and rest in GPT2_TENSORS:
            weights[f"{prefix}.{GPT2_TENSORS[rest]}"] = value
        elif arch == "gpt2" and rest in ("attn_qkv.weight", "attn_qkv.bias"):
            C = config.n_embd
            if value.shape[0] != 3 * C:
                raise FormatError(f"{where}: {name} has {value.shape[0]} rows, not 3 x {C}")
            for head, part in zip(("wq", "wk", "wv"), split_rows(value, [C, C, C])):
                weights[f"{prefix}.attn.{head}.{rest.split('.')[1]}"] = part
        else:
            raise FormatError(f"{where}: tensor {name} is not part of a {arch} model minillm knows")
    return weights


def _same(a, b):
    if isinstance(a, Quantized) != isinstance(b, Quantized):
        return False
    if isinstance(a, Quantized):
        return a.scheme == b.scheme and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    return a.shape == b.shape and np.array_equal(a, b)


def read_gguf(path):
    """Everything a GGUF file holds, read and checked (see the module docstring)."""
    where = os.path.basename(path)
    reader = open_reader(path)
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise FormatError(f"{where}: architecture {arch!r} is not supported; minillm loads {list(ARCHITECTURES)}")
    tensors = {t.name: read_tensor(t, where) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise FormatError(f"{where}: the file has no token_embd.weight")
    vocab = tensors["token_embd.weight"].shape[0]
    # llama.cpp's GPT-2 converter writes the tied head out again as output.weight
    if "output.weight" in tensors and _same(tensors["output.weight"], tensors["token_embd.weight"]):
        del tensors["output.weight"]
    rope_freqs = tensors.pop("rope_freqs.weight", None)
    config = config_from_metadata(meta, vocab, "output.weight" not in tensors, where)
    if rope_freqs is not None:
        config = _with_rope_freqs(config, rope_freqs, where)
    weights = minillm_weights(arch, tensors, config, where)
    tokenizer = tokenizer_from_gguf(meta, where)
    if tokenizer is None and "minillm.tokenizer.chars" in meta:       # written by export_gguf
        from ..tokenizers import CharTokenizer
        tokenizer = CharTokenizer(meta["minillm.tokenizer.chars"])
    return {"meta": meta, "config": config, "weights": weights, "types": types, "tokenizer": tokenizer,
            "path": path, "reader": reader}
