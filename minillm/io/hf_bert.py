"""Hugging Face BERT directories (BertModel, BertForMaskedLM, sentence-transformers models) into
minillm's EncoderModel, with their WordPiece tokenizer and, for sentence-transformers, the pooling.

Keys, with or without the "bert." prefix that the task models put in front:

    embeddings.{word,position,token_type}_embeddings.weight   -> wte, wpe, wtt
    embeddings.LayerNorm                                      -> norm_emb
    encoder.layer.{i}.attention.self.{query,key,value}        -> blocks.{i}.attn.{wq,wk,wv}
    encoder.layer.{i}.attention.output.dense / .LayerNorm     -> blocks.{i}.attn.wo / norm1
    encoder.layer.{i}.intermediate.dense / output.dense       -> blocks.{i}.ffn.fc / ffn.proj
    encoder.layer.{i}.output.LayerNorm                        -> blocks.{i}.norm2
    cls.predictions.transform.dense / .LayerNorm, .bias       -> mlm.dense / mlm.norm, mlm.bias
                                                                 (the decoder is the tied word table)

The pooler (a tanh layer on [CLS], which sentence-transformers does not use) and the next-sentence
head are not part of minillm's model and are skipped. A sentence-transformers directory has
modules.json: its Pooling module's config.json gives the pooling, a Normalize module the L2
normalisation, and sentence_bert_config.json the longest input (max_seq_length).
"""
import os

import numpy as np

from ..models import EncoderConfig
from ..models.pooling import pooling_modes
from ..tokenizers import WordPieceTokenizer
from .errors import FormatError
from .files import as_float32, read_json
from .hf import read_tensors

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
LAYER_KEYS = {"attention.self.query": "attn.wq", "attention.self.key": "attn.wk", "attention.self.value": "attn.wv",
              "attention.output.dense": "attn.wo", "attention.output.LayerNorm": "norm1",
              "intermediate.dense": "ffn.fc", "output.dense": "ffn.proj", "output.LayerNorm": "norm2"}
TOP_KEYS = {"embeddings.word_embeddings": "wte", "embeddings.position_embeddings": "wpe",
            "embeddings.token_type_embeddings": "wtt", "embeddings.LayerNorm": "norm_emb",
            "cls.predictions.transform.dense": "mlm.dense", "cls.predictions.transform.LayerNorm": "mlm.norm"}
SKIPPED = ("pooler.", "cls.seq_relationship.", "embeddings.position_ids", "cls.predictions.decoder.")
PARAM_NAMES = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}   # old LayerNorm names


def is_bert(hf):
    """True for a config.json of the BERT family."""
    arch = (hf.get("architectures") or [""])[0]
    return hf.get("model_type") == "bert" or arch.startswith("Bert")


def bert_config(hf, has_mlm, where):
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise FormatError(f"{where}: position_embedding_type {hf['position_embedding_type']!r} is not supported "
                          "(absolute is)")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise FormatError(f"{where}: hidden_act {act!r} is not supported; minillm has {sorted(ACTIVATIONS)}")
    try:
        return EncoderConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 512),
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
            d_ff=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2), norm="layernorm",
            norm_position="post", activation=ACTIVATIONS[act], bias=True, norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            mlm_head=has_mlm, pad_token_id=hf.get("pad_token_id") or 0)
    except KeyError as error:
        raise FormatError(f"{where}: config.json lacks {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise FormatError(f"{where}: config.json describes an impossible model ({error})") from None


def bert_weights(tensors, where):
    """{minillm parameter name: float32 array} from the BERT keys (see the module docstring)."""
    weights = {}
    for key, value in tensors.items():
        name = key.removeprefix("bert.")
        if name.startswith(SKIPPED):
            continue
        stem, _, param = name.rpartition(".")
        if name == "cls.predictions.bias":
            weights["mlm.bias"] = value
        elif stem in TOP_KEYS and param in PARAM_NAMES:
            weights[f"{TOP_KEYS[stem]}.{PARAM_NAMES[param]}"] = value
        elif stem.startswith("encoder.layer.") and param in PARAM_NAMES:
            i, _, rest = stem.removeprefix("encoder.layer.").partition(".")
            if rest not in LAYER_KEYS:
                raise FormatError(f"{where}: tensor {key} is not part of a BERT model minillm knows")
            weights[f"blocks.{i}.{LAYER_KEYS[rest]}.{PARAM_NAMES[param]}"] = value
        else:
            raise FormatError(f"{where}: tensor {key} is not part of a BERT model minillm knows")
    return {k: np.ascontiguousarray(as_float32(v)) for k, v in weights.items()}


def bert_tokenizer(directory, where):
    """The WordPiece tokenizer of vocab.txt (+ tokenizer_config.json's casing), or of tokenizer.json."""
    config = read_json(os.path.join(directory, "tokenizer_config.json"), required=False) or {}
    vocab_txt = os.path.join(directory, "vocab.txt")
    if os.path.isfile(vocab_txt):
        lower = bool(config.get("do_lower_case", True))
        return WordPieceTokenizer.from_vocab_txt(vocab_txt, lowercase=lower, strip_accents=config.get("strip_accents"))
    data = read_json(os.path.join(directory, "tokenizer.json"), required=False)
    if data is None:
        return None
    model, norm = data.get("model") or {}, data.get("normalizer") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise FormatError(f"{where}: tokenizer.json holds a {model.get('type')!r} model; a BERT directory needs "
                          "WordPiece with '##' continuations")
    vocab = sorted(model["vocab"], key=model["vocab"].get)
    if [model["vocab"][t] for t in vocab] != list(range(len(vocab))):
        raise FormatError(f"{where}: tokenizer.json's WordPiece ids are not 0..n-1")
    return WordPieceTokenizer(vocab, lowercase=bool(norm.get("lowercase", True)), strip_accents=norm.get("strip_accents"),
                              unk_token=model.get("unk_token", "[UNK]"),
                              max_input_chars_per_word=model.get("max_input_chars_per_word", 100))


def sentence_transformers_settings(directory, where):
    """{"pooling": modes, "normalize": bool, "max_length": int or None} of a sentence-transformers
    directory (modules.json), or None for a plain BERT directory."""
    modules = read_json(os.path.join(directory, "modules.json"), required=False)
    if modules is None:
        return None
    settings = {"pooling": ("mean",), "normalize": False, "max_length": None}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = read_json(os.path.join(directory, module.get("path", ""), "config.json"), required=False) or {}
            try:
                settings["pooling"] = pooling_modes(config)
            except ValueError as error:
                raise FormatError(f"{where}: {error}") from None
        elif kind == "Normalize":
            settings["normalize"] = True
        elif kind not in ("Transformer", ""):
            raise FormatError(f"{where}: sentence-transformers module {kind!r} is not supported (Transformer, "
                              "Pooling and Normalize are)")
    sbert = read_json(os.path.join(directory, "sentence_bert_config.json"), required=False) or {}
    settings["max_length"] = sbert.get("max_seq_length")
    return settings


def read_bert(directory):
    """{"config", "weights", "tokenizer", "types", "embedding"} of a Hugging Face BERT directory."""
    where = os.path.basename(os.path.normpath(directory))
    hf = read_json(os.path.join(directory, "config.json"))
    tensors = read_tensors(directory)
    has_mlm = any(k.startswith("cls.predictions.transform.") for k in tensors)
    config = bert_config(hf, has_mlm, where)
    weights = bert_weights(tensors, where)
    decoder = tensors.get("cls.predictions.decoder.weight")
    if decoder is not None and not np.array_equal(decoder, tensors.get("bert.embeddings.word_embeddings.weight",
                                                                      tensors.get("embeddings.word_embeddings.weight"))):
        raise FormatError(f"{where}: the MLM decoder is not tied to the word embeddings, which minillm's BERT needs")
    tokenizer = bert_tokenizer(directory, where)
    settings = sentence_transformers_settings(directory, where)
    return {"config": config, "weights": weights, "tokenizer": tokenizer,
            "types": {k: str(v.dtype) for k, v in tensors.items()}, "embedding": settings}
