"""Hugging Face model directories: LlamaForCausalLM and GPT2LMHeadModel safetensors, in and out.

A directory holds config.json, model.safetensors (or shards listed in model.safetensors.index.json)
and tokenizer.json (+ tokenizer_config.json with the chat template). Keys map one to one onto
minillm's parameter names, except GPT-2's:

    transformer.h.{i}.attn.c_attn.weight  (C, 3C) Conv1D  ->  transposed, cut into wq, wk, wv (C, C)
    c_proj, c_fc (Conv1D)                                  ->  transposed into Linear's (out, in)

Llama's q/k rows are already in rotate-half order (only GGUF permutes them). A tied head has no
lm_head.weight (or one equal to the embedding, which is then dropped).
"""
import os

import numpy as np

from ..models import ModelConfig
from ..nn.quantized import QuantizedWeights
from .errors import FormatError
from .files import as_float32, read_json, read_safetensors, write_json, write_safetensors
from .tokenizer import hf_tokenizer_files, tokenizer_from_hf

LLAMA_KEYS = {"input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
              "self_attn.q_proj.weight": "attn.wq.weight", "self_attn.k_proj.weight": "attn.wk.weight",
              "self_attn.v_proj.weight": "attn.wv.weight", "self_attn.o_proj.weight": "attn.wo.weight",
              "mlp.gate_proj.weight": "ffn.w_gate", "mlp.up_proj.weight": "ffn.w_up", "mlp.down_proj.weight": "ffn.w_down"}
GPT2_KEYS = {f"{h}.{p}": f"{m}.{p}" for h, m in (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.c_proj", "attn.wo"),
                                                 ("mlp.c_fc", "ffn.fc"), ("mlp.c_proj", "ffn.proj"))
             for p in ("weight", "bias")}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def read_tensors(directory):
    """{key: array} of the directory's model.safetensors or of every shard its index lists."""
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return read_safetensors(single)
    index = read_json(os.path.join(directory, "model.safetensors.index.json"), required=False)
    if index is None:
        raise FormatError(f"{directory}: no model.safetensors nor model.safetensors.index.json")
    tensors = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        tensors.update(read_safetensors(os.path.join(directory, shard)))
    missing = sorted(set(index.get("weight_map", {})) - set(tensors))
    if missing:
        raise FormatError(f"{directory}: the shards lack tensors the index lists: {missing[:4]}")
    return tensors


def _rope_theta(hf):
    params = hf.get("rope_parameters") or {}
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _rope_scaling(hf, where):
    """rope_scaling (transformers < 5) or rope_parameters (>= 5) as ModelConfig.rope_scaling: None for
    plain RoPE, else the HF dict without rope_theta, checked against F.RopeScaling."""
    from ..functional import RopeScaling
    values = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    values.pop("rope_theta", None)
    kind = values.get("rope_type") or values.get("type") or "default"
    if kind == "default":
        return None
    try:
        RopeScaling.from_dict(values, hf.get("max_position_embeddings", 2048), where="rope_scaling")
    except ValueError as error:
        raise FormatError(f"{where}: {error}") from None
    return values


def config_from_hf(hf, where):
    arch = (hf.get("architectures") or [hf.get("model_type")])[0]
    try:
        if arch in ("LlamaForCausalLM", "llama"):
            C, H = hf["hidden_size"], hf["num_attention_heads"]
            if hf.get("head_dim", C // H) != C // H:
                raise FormatError(f"{where}: head_dim {hf['head_dim']} differs from hidden_size / heads = {C // H}")
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise FormatError(f"{where}: Llama with attention or MLP biases is not supported")
            if hf.get("hidden_act", "silu") != "silu":
                raise FormatError(f"{where}: Llama activation {hf['hidden_act']!r} is not supported (silu is)")
            return "llama", ModelConfig(
                vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                n_layer=hf["num_hidden_layers"], n_head=H, n_kv_head=hf.get("num_key_value_heads", H), n_embd=C,
                d_ff=hf["intermediate_size"], norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=_rope_theta(hf),
                rope_scaling=_rope_scaling(hf, where), norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
        if arch in ("GPT2LMHeadModel", "GPT2Model", "gpt2"):
            if hf.get("activation_function", "gelu_new") not in GPT2_GELUS:
                raise FormatError(f"{where}: GPT-2 activation {hf['activation_function']!r} is not supported "
                                  f"(minillm's GELU is the tanh form: {GPT2_GELUS})")
            if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or \
                    not hf.get("scale_attn_weights", True):
                raise FormatError(f"{where}: GPT-2 attention-scaling variants are not supported")
            return "gpt2", ModelConfig(
                vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
                n_head=hf["n_head"], n_embd=hf["n_embd"], d_ff=hf.get("n_inner"), norm="layernorm",
                activation="gelu", positions="learned", bias=True,
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    except KeyError as error:
        raise FormatError(f"{where}: config.json lacks {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise FormatError(f"{where}: config.json describes an impossible model ({error})") from None
    raise FormatError(f"{where}: architecture {arch!r} is not supported; minillm loads LlamaForCausalLM and "
                      "GPT2LMHeadModel")


def weights_from_hf(arch, tensors, config, where):
    """{minillm parameter name: array} from {HF key: array} (see the module docstring)."""
    weights = {}
    for key, value in tensors.items():
        key = key.removeprefix("model.") if arch == "llama" else key.removeprefix("transformer.")
        if key in ("embed_tokens.weight", "wte.weight"):
            weights["wte.weight"] = value
        elif key in ("norm.weight", "ln_f.weight", "ln_f.bias"):
            weights["norm_f." + key.split(".")[1]] = value
        elif key == "wpe.weight":
            weights["wpe.weight"] = value
        elif key == "lm_head.weight":
            weights["lm_head.weight"] = value
        elif key.startswith(("layers.", "h.")):
            _, i, rest = key.split(".", 2)
            prefix = f"blocks.{i}"
            if rest in ("attn.bias", "attn.masked_bias", "self_attn.rotary_emb.inv_freq"):
                continue                                        # old transformers' saved buffers
            if arch == "gpt2" and rest in CONV1D:
                value = value.T
            if arch == "llama" and rest in LLAMA_KEYS:
                weights[f"{prefix}.{LLAMA_KEYS[rest]}"] = value
            elif arch == "gpt2" and rest in GPT2_KEYS:
                weights[f"{prefix}.{GPT2_KEYS[rest]}"] = value
            elif arch == "gpt2" and rest.startswith("attn.c_attn."):
                C = config.n_embd
                for j, head in enumerate(("wq", "wk", "wv")):
                    weights[f"{prefix}.attn.{head}.{rest.rsplit('.', 1)[1]}"] = value[j * C:(j + 1) * C]
            else:
                raise FormatError(f"{where}: tensor {key} is not part of a {arch} model minillm knows")
        else:
            raise FormatError(f"{where}: tensor {key} is not part of a {arch} model minillm knows")
    if config.tie_embeddings and "lm_head.weight" in weights:
        if not np.array_equal(weights["lm_head.weight"], weights.get("wte.weight")):
            raise FormatError(f"{where}: tie_word_embeddings is set but lm_head.weight differs from the embedding")
        del weights["lm_head.weight"]
    return {k: np.ascontiguousarray(as_float32(v)) for k, v in weights.items()}


def read_hf(directory):
    """{"config", "weights", "tokenizer", "types"} of a Hugging Face model directory."""
    where = os.path.basename(os.path.normpath(directory))
    hf = read_json(os.path.join(directory, "config.json"))
    arch, config = config_from_hf(hf, where)
    tensors = read_tensors(directory)
    types = {k: str(v.dtype) for k, v in tensors.items()}
    weights = weights_from_hf(arch, tensors, config, where)
    data = read_json(os.path.join(directory, "tokenizer.json"), required=False)
    tokenizer = None
    if data is not None:
        tokenizer = tokenizer_from_hf(data, where, read_json(os.path.join(directory, "tokenizer_config.json"),
                                                              required=False), hf)
    elif "minillm_char_tokenizer" in hf:
        from ..tokenizers import CharTokenizer
        tokenizer = CharTokenizer(hf["minillm_char_tokenizer"])
    return {"config": config, "weights": weights, "tokenizer": tokenizer, "types": types}


# ---- export -------------------------------------------------------------------------------

def family(config):
    """"llama" or "gpt2": the family a minillm config can be written as, or ValueError saying why not."""
    c = config
    if c.n_experts or c.window:
        raise ValueError("export: Mixture-of-Experts and sliding-window models have no Llama or GPT-2 layout")
    if (c.norm, c.activation, c.positions, c.bias) == ("rmsnorm", "swiglu", "rope", False):
        return "llama"
    if (c.norm, c.activation, c.positions, c.bias) == ("layernorm", "gelu", "learned", True):
        return "gpt2"
    raise ValueError(f"export: a model with norm={c.norm}, activation={c.activation}, positions={c.positions}, "
                     f"bias={c.bias} is neither Llama (rmsnorm, swiglu, rope, no bias) nor GPT-2 "
                     "(layernorm, gelu, learned, bias)")


def float_weights(model):
    """{parameter name: float32 array} of the float model model stands for (quantized weights dequantized)."""
    weights = {name: p.data.astype(np.float32, copy=False) for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedWeights):   # QuantizedLinear.weight, QuantizedSwiGLU.w_gate, ... keep
            # their float names; QuantizedEmbedding's .table stands for the Embedding's .weight
            weights[name.removesuffix(".table") + ".weight" if name.endswith(".table") else name] = module.dequantize()
    return weights


def hf_config(config, arch):
    c = config
    if c.rope_scaling and c.rope_scaling_config().rope_type == "freq_factors":
        raise ValueError("export: a Hugging Face config has no freq_factors RoPE scaling (llama.cpp's rope_freqs); "
                         "export this model as GGUF")
    if arch == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
                "hidden_size": c.n_embd, "intermediate_size": c.hidden_size, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head or c.n_head,
                "head_dim": c.n_embd // c.n_head, "max_position_embeddings": c.block_size, "hidden_act": "silu",
                "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                                    **(c.rope_scaling_config().to_dict() if c.rope_scaling else {})},
                "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
                "torch_dtype": "float32"}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_positions": c.block_size,
            "n_inner": c.hidden_size, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
            "tie_word_embeddings": c.tie_embeddings, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "torch_dtype": "float32"}


def hf_tensors(weights, config, arch):
    """{HF key: array} for minillm's float weights (the inverse of weights_from_hf)."""
    out = {}
    inverse = {v: k for k, v in (LLAMA_KEYS if arch == "llama" else GPT2_KEYS).items()}
    top = "model." if arch == "llama" else "transformer."
    for name, value in weights.items():
        if name == "wte.weight":
            out[top + ("embed_tokens.weight" if arch == "llama" else "wte.weight")] = value
        elif name == "wpe.weight":
            out[top + "wpe.weight"] = value
        elif name.startswith("norm_f."):
            out[top + ("norm." if arch == "llama" else "ln_f.") + name.split(".")[1]] = value
        elif name == "lm_head.weight":
            out["lm_head.weight"] = value
        else:
            _, i, rest = name.split(".", 2)
            layer = f"{top}{'layers' if arch == 'llama' else 'h'}.{i}."
            if arch == "gpt2" and rest.startswith(("attn.wq.", "attn.wk.", "attn.wv.")):
                continue                                       # fused below
            key = inverse[rest]
            out[layer + key] = value.T if arch == "gpt2" and key in CONV1D else value
    if arch == "gpt2":
        for i in range(config.n_layer):
            for p in ("weight", "bias"):
                fused = np.concatenate([weights[f"blocks.{i}.attn.{h}.{p}"] for h in ("wq", "wk", "wv")])
                out[f"transformer.h.{i}.attn.c_attn.{p}"] = fused.T if p == "weight" else fused
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def export_hf(model, tokenizer, directory):
    """Write model (a DecoderLM of the Llama or GPT-2 flavour; quantized weights are dequantized) and
    its tokenizer as a Hugging Face directory that transformers' from_pretrained loads."""
    arch = family(model.config)
    os.makedirs(directory, exist_ok=True)
    tensors = hf_tensors(float_weights(model), model.config, arch)
    config = hf_config(model.config, arch)
    extra = {}
    if tokenizer is not None and getattr(tokenizer, "kind", None) == "char":
        config["minillm_char_tokenizer"] = "".join(tokenizer.chars)
    elif tokenizer is not None:
        data, tok_config = hf_tokenizer_files(tokenizer)
        extra = {"tokenizer.json": data, "tokenizer_config.json": tok_config}
        for key in ("bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None:
                config[key] = int(value)
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors, {"format": "pt"})
    for name, data in extra.items():
        write_json(os.path.join(directory, name), data)
    write_json(os.path.join(directory, "config.json"), config)
    return directory
