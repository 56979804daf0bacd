"""Multi-turn chat with a pretrained model: its own chat template, one KV cache for the whole
conversation, replies streamed as they are sampled.

    session = ChatSession(model, tokenizer, system="You are terse.")
    for piece in session.reply("What is 2 + 2?"):     # text as it comes
        print(piece, end="", flush=True)

Each turn renders the whole conversation with the template (add_generation_prompt=True), encodes
it, and runs the model only on the tokens after those already in the cache: the previous turns
cost nothing again. If the new encoding does not start with the cached tokens (a reply whose text
re-encodes to other ids), the cache is cut back to the longest common prefix. A reply ends at the
template's end-of-turn token (<|im_end|> for ChatML, else EOS), at max_new_tokens, or at the
context length. reset() forgets the conversation (the system message stays).
"""
import codecs

import numpy as np

from .generate import sample_next
from .io.chat_template import end_of_turn_id, render_chat, special_token_texts
from .tensor import no_grad


class StreamDecoder:
    """Token ids -> text, piece by piece, holding back bytes of a character split across tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token):
        return self._utf8.decode(self.tokenizer.decode_bytes([int(token)]))

    def flush(self):
        return self._utf8.decode(b"", final=True)


class ChatSession:
    def __init__(self, model, tokenizer, system=None, temperature=0.7, top_k=None, top_p=None, seed=None,
                 max_new_tokens=512, initial_cache=1024):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat: this model has no chat template (tokenizer.chat_template); use "
                             "`minillm generate` for plain continuation")
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.rng = np.random.default_rng(seed)
        self.max_new_tokens = max_new_tokens
        self.end_id = end_of_turn_id(tokenizer)
        self.context = model.config.block_size
        self._initial = min(initial_cache, self.context)
        self.reset()

    def reset(self):
        """Forget the conversation; the system message, if any, stays."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cached = []                                   # ids whose keys and values are in the cache
        self.caches = self.model.new_caches(1, self._initial)

    def _prompt_ids(self):
        text = render_chat(self.tokenizer.chat_template, self.messages, True, **special_token_texts(self.tokenizer))
        ids = self.tokenizer.encode(text, allowed_special="all")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _ensure_room(self, n):
        """Caches large enough for n tokens (they grow by doubling, up to the context length)."""
        size = self.caches[0].k.shape[2]
        if n <= size:
            return
        if n > self.context:
            raise ValueError(f"chat: the conversation is {n} tokens, more than the model's context of "
                             f"{self.context}; /reset to start over")
        bigger = self.model.new_caches(1, min(self.context, max(n, 2 * size)))
        for old, new in zip(self.caches, bigger):
            new.k[:, :, :old.length] = old.k[:, :, :old.length]
            new.v[:, :, :old.length] = old.v[:, :, :old.length]
            new.length = old.length
        self.caches = bigger

    def _feed(self, ids):
        """Run the model on ids after the cached tokens; the logits of the last one, (V,)."""
        self._ensure_room(len(self.cached) + len(ids))
        logits = self.model(np.array([ids]), caches=self.caches)
        self.cached += list(ids)
        return logits.data[0, -1]

    def reply(self, text):
        """Add a user message and yield the assistant's reply as pieces of text; the finished reply
        joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        ids = self._prompt_ids()
        keep = 0
        while keep < min(len(ids), len(self.cached)) and ids[keep] == self.cached[keep]:
            keep += 1
        keep = min(keep, len(ids) - 1)                    # at least one new token to run
        self.cached = self.cached[:keep]
        for cache in self.caches:
            cache.length = keep
        stream, reply_ids = StreamDecoder(self.tokenizer), []
        with no_grad():
            logits = self._feed(ids[keep:])
            for _ in range(self.max_new_tokens):
                token = int(sample_next(logits[None], rng=self.rng, **self.sampling)[0])
                if token == self.end_id or token == getattr(self.tokenizer, "eos_token_id", None):
                    break
                reply_ids.append(token)
                piece = stream.push(token)
                if piece:
                    yield piece
                if len(self.cached) + 1 > self.context:
                    break
                logits = self._feed([token])
        tail = stream.flush()
        if tail:
            yield tail
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply_ids, errors="replace")})
