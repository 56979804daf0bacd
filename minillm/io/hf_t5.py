"""Hugging Face T5 directories (T5ForConditionalGeneration) into minillm's EncoderDecoderModel.

    shared.weight                                              -> wte.weight (encoder, decoder, tied head)
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                               -> enc_pos.table / dec_pos.table
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}          -> encoder.{i}.attn.{wq,wk,wv,wo}
    encoder.block.{i}.layer.0.layer_norm / layer.1.layer_norm  -> encoder.{i}.norm1 / norm2
    encoder.block.{i}.layer.1.DenseReluDense.{wi,wo}           -> encoder.{i}.ffn.{fc,proj}
                                     (gated: wi_0, wi_1, wo    -> ffn.gate, ffn.fc, ffn.proj)
    decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}        -> decoder.{i}.cross.{wq,wk,wv,wo}
    decoder.block.{i}.layer.{1,2}.layer_norm, layer.2.DenseReluDense -> decoder.{i}.norm2, norm3, ffn
    {encoder,decoder}.final_layer_norm                         -> enc_norm / dec_norm
    lm_head.weight                                             -> lm_head (when not the shared table)

feed_forward_proj "relu" is T5 v1.0's ReLU, "gated-gelu" v1.1's gated GELU in its tanh form (as
transformers maps it); the decoder output is scaled by d_model^-0.5 before the head unless
config.json says scale_decoder_outputs: false (transformers 5) or tie_word_embeddings: false (v1.1
files, which also hold their own lm_head.weight). A spiece.model next to the
weights is read as the tokenizer (minillm/tokenizers/sentencepiece.py).
"""
import json
import os

import numpy as np

from ..models import Seq2SeqConfig
from .errors import FormatError
from .files import as_float32
from .hf import read_tensors

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "silu": "silu"}
ATTENTION = {"q": "wq", "k": "wk", "v": "wv", "o": "wo"}
FFN = {"wi": "fc", "wi_0": "gate", "wi_1": "fc", "wo": "proj"}


def is_t5(hf):
    arch = (hf.get("architectures") or [""])[0]
    return hf.get("model_type") == "t5" or arch.startswith("T5")


def t5_config(hf, untied_head, where):
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated" and len(parts) == 2
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in ACTIVATIONS or (len(parts) > 1 and not gated):
        raise FormatError(f"{where}: feed_forward_proj {proj!r} is not supported")
    try:
        return Seq2SeqConfig(
            vocab_size=hf["vocab_size"], block_size=int(hf.get("n_positions") or 512), n_layer=hf["num_layers"],
            n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"], n_head=hf["num_heads"],
            n_embd=hf["d_model"], head_dim=hf["d_kv"], d_ff=hf["d_ff"], norm="rmsnorm", norm_position="pre",
            activation=ACTIVATIONS[act], gated=gated, bias=False, scaled=False, positions="relative",
            num_buckets=hf.get("relative_attention_num_buckets", 32),
            max_distance=hf.get("relative_attention_max_distance", 128), norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
            tie_embeddings=not untied_head, scale_decoder_output=_scaled_head(hf),
            pad_token_id=hf.get("pad_token_id", 0), eos_token_id=_first(hf.get("eos_token_id", 1)),
            decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)))
    except KeyError as error:
        raise FormatError(f"{where}: config.json lacks {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise FormatError(f"{where}: config.json describes an impossible model ({error})") from None


def _scaled_head(hf):
    """Whether the decoder output is scaled by d_model^-0.5 before the head: transformers 5 writes
    scale_decoder_outputs; older files say tie_word_embeddings: false for T5 v1.1, which does not."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def _first(value):
    return value[0] if isinstance(value, list) else value


def _layer(stack, i, layer, rest, where, key):
    """The minillm name of one tensor of {encoder,decoder}.block.{i}.layer.{layer}.{rest}."""
    prefix = f"{stack}.{i}"
    attention = "SelfAttention" if layer == 0 else "EncDecAttention"
    head, _, param = rest.rpartition(".")
    if rest == "layer_norm.weight":
        return f"{prefix}.norm{layer + 1}.weight"
    if head.startswith(attention + ".") and head.split(".")[1] in ATTENTION and param == "weight":
        side = "attn" if layer == 0 else "cross"
        return f"{prefix}.{side}.{ATTENTION[head.split('.')[1]]}.weight"
    ffn_layer = 1 if stack == "encoder" else 2
    if layer == ffn_layer and head.startswith("DenseReluDense.") and head.split(".")[1] in FFN and param == "weight":
        return f"{prefix}.ffn.{FFN[head.split('.')[1]]}.weight"
    raise FormatError(f"{where}: tensor {key} is not part of a T5 model minillm knows")


def t5_weights(tensors, config, where):
    weights = {}
    shared = tensors.get("shared.weight")
    for key, value in tensors.items():
        if key == "shared.weight":
            weights["wte.weight"] = value
        elif key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if shared is not None and not np.array_equal(value, shared):
                raise FormatError(f"{where}: {key} differs from shared.weight; minillm's T5 shares one table")
            weights.setdefault("wte.weight", value)
        elif key == "lm_head.weight":
            if not config.tie_embeddings:
                weights["lm_head.weight"] = value
        elif key in ("encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"):
            weights[("enc" if key.startswith("encoder") else "dec") + "_norm.weight"] = value
        elif key.endswith("SelfAttention.relative_attention_bias.weight") and ".block.0.layer.0." in key:
            weights[("enc" if key.startswith("encoder") else "dec") + "_pos.table"] = value
        elif key.startswith(("encoder.block.", "decoder.block.")):
            stack, _, i, _, layer, rest = key.split(".", 5)
            weights[_layer(stack, i, int(layer), rest, where, key)] = value
        else:
            raise FormatError(f"{where}: tensor {key} is not part of a T5 model minillm knows")
    return {k: np.ascontiguousarray(as_float32(v)) for k, v in weights.items()}


def read_t5(directory):
    """{"config", "weights", "tokenizer", "types"} of a Hugging Face T5 directory."""
    where = os.path.basename(os.path.normpath(directory))
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, ValueError) as error:
        raise FormatError(f"{path}: not readable JSON ({error})") from None
    tensors = read_tensors(directory)
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    untied = head is not None and not (shared is not None and np.array_equal(head, shared))
    config = t5_config(hf, untied, where)
    weights = t5_weights(tensors, config, where)
    tokenizer = None
    spiece = os.path.join(directory, "spiece.model")
    if os.path.isfile(spiece):
        from ..tokenizers.sentencepiece import SentencePieceTokenizer
        tokenizer = SentencePieceTokenizer.from_file(spiece)
    return {"config": config, "weights": weights, "tokenizer": tokenizer,
            "types": {k: str(v.dtype) for k, v in tensors.items()}}
