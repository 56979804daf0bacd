"""A model as the server serves it: its engine, its tokenizer's prompts, its stop tokens, its name.

ServedModel turns text (a completion prompt, or chat messages through the model's chat template)
into token ids and token ids into text; the engine (engine.py) does the rest. An encoder-only
model (family "encoder") serves /v1/embeddings through minillm.embed, as does any model object with
an `embed(texts) -> (len(texts), dim) array` method; for a decoder `embed` raises NotAnEncoder.
"""
import sys

import numpy as np

from ..io.chat_template import end_of_turn_id, render_chat, special_token_texts
from .engine import Engine, EngineConfig
from .request import token_bytes


class NotAnEncoder(ValueError):
    pass


class InputTooLong(ValueError):
    pass


class ServedModel:
    def __init__(self, name, model, tokenizer, engine_config=None):
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.is_decoder = hasattr(model, "infer") and hasattr(model, "new_caches")
        self.engine = Engine(model, tokenizer, engine_config or EngineConfig()) if self.is_decoder else None
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.end_of_turn_id = end_of_turn_id(tokenizer) if getattr(tokenizer, "chat_template", None) else None

    @property
    def context(self):
        return self.model.config.block_size

    def prompt_ids(self, prompt):
        """Token ids of a completion prompt (a string, or ids as they are), with BOS where the tokenizer adds it."""
        if not isinstance(prompt, str):
            return list(prompt)
        ids = self._encode(prompt)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def chat_ids(self, messages):
        """Token ids of the conversation through the model's chat template, ready for the assistant's turn."""
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ValueError(f"model {self.name!r} has no chat template; use /v1/completions")
        text = render_chat(template, messages, True, **special_token_texts(self.tokenizer))
        ids = self._encode(text)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _encode(self, text):
        """Ids of text, special-token text as special tokens (minillm's character tokenizer has none)."""
        if hasattr(self.tokenizer, "special_tokens"):
            return [int(i) for i in self.tokenizer.encode(text, allowed_special="all")]
        return [int(i) for i in self.tokenizer.encode(text)]

    def stop_token_ids(self, chat):
        ids = {self.eos_id, self.end_of_turn_id} if chat else {self.eos_id}
        return tuple(sorted(i for i in ids if i is not None))

    def token_text(self, token):
        return token_bytes(self.tokenizer, token).decode("utf-8", errors="replace")

    def prompt_embedding(self, ids):
        """The mean of the prompt's token embeddings (D,): what the learned router reads."""
        return np.asarray(self.model.wte.infer(np.asarray([ids]))[0], dtype=np.float64).mean(axis=0)

    def embed(self, texts):
        """(vectors (len(texts), dim) float32, tokens read) for texts. An encoder-only model (BERT, a
        sentence-transformers directory) embeds through minillm.embed.embed: [CLS] text [SEP], the
        model's pooling and normalisation, exactly what `minillm embed` prints; a text longer than the
        model reads (max_length: the model's own, or its context) is refused, as OpenAI refuses, rather
        than cut. Another model object with an embed(texts) method is used as it is."""
        family = getattr(self.model.config, "family", "decoder")
        if family == "encoder":
            from ..embed import embed, embedding_settings, token_ids
            limit = embedding_settings(self.model)[2]
            counts = [len(token_ids(self.tokenizer, text, sys.maxsize)) for text in texts]
            for i, n in enumerate(counts):
                if n > limit:
                    raise InputTooLong(f"input[{i}] is {n} tokens ([CLS] and [SEP] included), more than model "
                                       f"{self.name!r} reads ({limit}); shorten or split it")
            return embed(self.model, self.tokenizer, list(texts)), sum(counts)
        if not hasattr(self.model, "embed"):
            raise NotAnEncoder(f"model {self.name!r} is a {family.replace('_', '-')} model; /v1/embeddings needs an "
                               "encoder model (BERT-style, or one with an embed(texts) method)")
        vectors = np.asarray(self.model.embed(list(texts)), dtype=np.float32)
        return vectors, sum(len(self.tokenizer.encode(t)) for t in texts)
