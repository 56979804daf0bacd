"""Tokenizers of pretrained models: from GGUF metadata and Hugging Face tokenizer.json into
minillm's MergesBPETokenizer, and back out.

Byte-level BPE files write each token's bytes as text through GPT-2's byte-to-character table
(bytes_to_unicode: printable bytes stand for themselves, the others for chr(256 + n)), so " the"
is "Ġthe"; merges are "left right" in the same alphabet. Reading inverts the table.

The pre-tokenizer is named in GGUF (tokenizer.ggml.pre, llama.cpp's list) and spelled out in
tokenizer.json (a Sequence of Split / Digits / ByteLevel steps); both become minillm's regex stages
(minillm/tokenizers/merges.py). An unknown kind is an error, not a guess: a wrong split gives
wrong ids silently.
"""
import json

import regex

from ..tokenizers.bpe import BPETokenizer
from ..tokenizers.merges import GPT2_PATTERN, MergesBPETokenizer
from .errors import FormatError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (regex stages, ignore_merges), from llama.cpp's llama-vocab.cpp
PRE_TOKENIZERS = {
    "gpt-2": ([GPT2_PATTERN], False),
    "gpt2": ([GPT2_PATTERN], False),
    "smollm": ([r"\p{N}", GPT2_PATTERN], False),
    "llama-bpe": ([LLAMA3_PATTERN], True),
    "llama3": ([LLAMA3_PATTERN], True),
}
CONTROL, USER_DEFINED = 3, 4          # GGUF token types matched as special tokens (1 normal, 2 unknown, ...)


def bytes_to_unicode():
    """GPT-2's table {byte: character} for writing any bytes as printable text."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_bytes(text, where):
    """The bytes a byte-level token string stands for."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError as error:
        raise FormatError(f"{where}: token {text!r} has the character {error.args[0]!r}, which is not in the "
                          "byte-level alphabet; this is not a byte-level BPE vocabulary") from None


def token_text(data):
    return "".join(BYTE_TO_CHAR[b] for b in data)


def build(tokens, merges, special, stages, ignore_merges, where, **extra):
    """A MergesBPETokenizer from token strings (id order), merge strings/pairs and the ids of the
    special tokens; every problem is a FormatError naming `where`."""
    ranks, specials, seen = {}, {}, {}
    for i, text in enumerate(tokens):
        if text is None:
            continue
        if i in special:
            specials[text] = i
        else:
            data = token_bytes(text, where)
            if data in ranks:
                raise FormatError(f"{where}: tokens {ranks[data]} and {i} have the same bytes {data!r}")
            ranks[data] = i
        seen[text] = i
    pairs = []
    for n, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left not in seen or right not in seen:
            raise FormatError(f"{where}: merge {n} {merge!r} names a token that is not in the vocabulary; "
                              "the merges do not match the tokens")
        pairs.append((seen[left], seen[right]))
    try:
        return MergesBPETokenizer(ranks, pairs, specials, stages, ignore_merges, **extra)
    except ValueError as error:
        raise FormatError(f"{where}: the tokenizer does not fit its vocabulary: {error}") from None


# ---- GGUF ---------------------------------------------------------------------------------

def tokenizer_from_gguf(meta, where):
    """The tokenizer in a GGUF file's metadata ({key: value}), or None if the file has none."""
    model = meta.get("tokenizer.ggml.model")
    if model in (None, "none", "no_vocab"):
        return None
    if model != "gpt2":
        raise FormatError(f"{where}: tokenizer model {model!r} is not supported (minillm reads byte-level BPE, "
                          "tokenizer.ggml.model = 'gpt2')")
    pre = meta.get("minillm.tokenizer.stages")
    if pre is not None:
        stages, ignore = json.loads(pre), bool(meta.get("minillm.tokenizer.ignore_merges", False))
    else:
        kind = meta.get("tokenizer.ggml.pre", "gpt-2")
        if kind not in PRE_TOKENIZERS:
            raise FormatError(f"{where}: pre-tokenizer {kind!r} is not supported; known: {sorted(PRE_TOKENIZERS)}")
        stages, ignore = PRE_TOKENIZERS[kind]
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if not tokens or len(types) != len(tokens):
        raise FormatError(f"{where}: tokenizer.ggml.tokens and token_type are missing or of different lengths")
    special = {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)}
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    for name, i in (("bos", bos), ("eos", eos)):
        if i is not None and not 0 <= i < len(tokens):
            raise FormatError(f"{where}: tokenizer.ggml.{name}_token_id {i} is outside the {len(tokens)} tokens")
    return build(tokens, meta.get("tokenizer.ggml.merges") or [], special, stages, ignore, where,
                 bos_token_id=bos, eos_token_id=eos, add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token")),
                 chat_template=meta.get("tokenizer.chat_template"),
                 unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"))


def as_merges_tokenizer(tokenizer):
    """A MergesBPETokenizer encoding like tokenizer (a MergesBPETokenizer is returned as is).

    A tiktoken-rule BPETokenizer gets the merge list Hugging Face's TikTokenConverter writes:
    every split (a, b) of every token t into two tokens, ordered by the rank of t (then of a, b).
    That reproduces tiktoken's rule except where two different pairs of one text both form the same
    token at once, which the tests' texts never hit."""
    if isinstance(tokenizer, MergesBPETokenizer):
        return tokenizer
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"as_merges_tokenizer: a {type(tokenizer).__name__} is not byte-level BPE")
    ranks = tokenizer.ranks
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(ranks[token[:k]], ranks[token[k:]]) for k in range(1, len(token))
                  if token[:k] in ranks and token[k:] in ranks]
        merges += sorted(splits)
    return MergesBPETokenizer(ranks, merges, tokenizer.special_tokens, [tokenizer.pattern])


def gguf_tokenizer_fields(tokenizer):
    """{GGUF key: value} describing tokenizer (byte-level BPE) for a GGUF file."""
    tok = as_merges_tokenizer(tokenizer)
    n = tok.vocab_size
    tokens, types = [f"[PAD{i}]" for i in range(n)], [5] * n            # gaps: unused tokens
    for data, i in tok.ranks.items():
        tokens[i], types[i] = token_text(data), 1
    for text, i in tok.special_tokens.items():
        tokens[i], types[i] = text, CONTROL
    pre = next((name for name, (stages, ignore) in PRE_TOKENIZERS.items()
                if stages == tok.stages and ignore == tok.ignore_merges), "gpt-2")
    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.token_type": types,
              "tokenizer.ggml.merges": [f"{tokens[a]} {tokens[b]}" for a, b in tok.merges.tolist()],
              "minillm.tokenizer.stages": json.dumps(tok.stages),
              "minillm.tokenizer.ignore_merges": tok.ignore_merges}
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.special_tokens.get("<|endoftext|>")
    for key, value in (("bos_token_id", tok.bos_token_id), ("eos_token_id", eos)):
        if value is not None:
            fields[f"tokenizer.ggml.{key}"] = int(value)
    if tok.unk_token_id is not None:
        fields["tokenizer.ggml.unknown_token_id"] = int(tok.unk_token_id)
    fields["tokenizer.ggml.add_bos_token"] = tok.add_bos_token
    if tok.chat_template:
        fields["tokenizer.chat_template"] = tok.chat_template
    return fields


# ---- Hugging Face tokenizer.json ------------------------------------------------------------

def _stages(pre, where):
    """Regex stages of a tokenizer.json pre_tokenizer; True in the second value once a ByteLevel is seen."""
    if pre is None:
        return [], False
    kind = pre.get("type")
    if kind == "Sequence":
        stages, byte_level = [], False
        for step in pre["pretokenizers"]:
            more, seen = _stages(step, where)
            stages += more
            byte_level |= seen
        return stages, byte_level
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise FormatError(f"{where}: ByteLevel add_prefix_space=true is not supported")
        return ([GPT2_PATTERN] if pre.get("use_regex", True) else []), True
    if kind == "Digits":
        return [r"\p{N}" if pre.get("individual_digits") else r"\p{N}+"], False
    if kind == "Split":
        pattern = pre.get("pattern", {})
        text = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern.get("String", ""))
        if pre.get("behavior") != "Isolated" or pre.get("invert"):
            raise FormatError(f"{where}: Split with behavior {pre.get('behavior')!r}, invert={pre.get('invert')} "
                              "is not supported (only Isolated)")
        return [text], False
    raise FormatError(f"{where}: pre-tokenizer {kind!r} is not supported (Sequence, ByteLevel, Digits, Split are)")


def _token_id(value, ids):
    text = value.get("content") if isinstance(value, dict) else value
    return ids.get(text) if text is not None else None


def tokenizer_from_hf(data, where, tokenizer_config=None, model_config=None):
    """A MergesBPETokenizer from a parsed tokenizer.json (and tokenizer_config.json / config.json)."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise FormatError(f"{where}: tokenizer model {model.get('type')!r} is not supported (byte-level BPE is)")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise FormatError(f"{where}: BPE with byte_fallback or subword prefixes/suffixes is not byte-level BPE")
    if data.get("normalizer") is not None:
        raise FormatError(f"{where}: tokenizer normalizers are not supported (found {data['normalizer'].get('type')!r})")
    stages, byte_level = _stages(data.get("pre_tokenizer"), where)
    if not byte_level:
        raise FormatError(f"{where}: the pre-tokenizer has no ByteLevel step; this is not byte-level BPE")
    vocab = dict(model.get("vocab") or {})
    added = data.get("added_tokens") or []
    for t in added:
        vocab.setdefault(t["content"], t["id"])
    tokens = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for text, i in vocab.items():
        tokens[i] = text
    special = {t["id"] for t in added}
    config = dict(model_config or {})
    config.update({k: v for k, v in (tokenizer_config or {}).items() if v is not None})
    bos = _token_id(config.get("bos_token"), vocab) if config.get("bos_token") else config.get("bos_token_id")
    eos = _token_id(config.get("eos_token"), vocab) if config.get("eos_token") else config.get("eos_token_id")
    template = (data.get("post_processor") or {}).get("single") or []
    add_bos = bool(template) and "SpecialToken" in template[0]
    chat = config.get("chat_template")
    if isinstance(chat, list):          # [{"name": "default", "template": ...}, ...]
        chat = next((c["template"] for c in chat if c.get("name") == "default"), None)
    return build(tokens, model.get("merges") or [], special, stages, bool(model.get("ignore_merges")), where,
                 bos_token_id=bos, eos_token_id=eos, add_bos_token=add_bos, chat_template=chat,
                 unk_token_id=vocab.get(model["unk_token"]) if model.get("unk_token") else None)


def hf_tokenizer_files(tokenizer):
    """(tokenizer.json dict, tokenizer_config.json dict) for a byte-level BPE tokenizer."""
    tok = as_merges_tokenizer(tokenizer)
    vocab = {token_text(data): i for data, i in tok.ranks.items()}
    texts = {i: t for t, i in vocab.items()}
    vocab.update(tok.special_tokens)           # in the model's vocab too, or tokenizers gives them new ids
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    texts.update({i: s for s, i in tok.special_tokens.items()})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    if tok.stages == [GPT2_PATTERN]:
        pre = dict(byte_level, use_regex=True)
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in tok.stages
        ] + [byte_level]}
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None,
                      "unk_token": None if tok.unk_token_id is None else texts[tok.unk_token_id],
                      "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": tok.ignore_merges, "vocab": vocab,
                      "merges": [[texts[a], texts[b]] for a, b in tok.merges.tolist()]}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for key, i in (("bos_token", tok.bos_token_id), ("eos_token", tok.eos_token_id)):
        if i is not None:
            config[key] = texts[i]
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    return data, config
