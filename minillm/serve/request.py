"""One request's state in the engine: its tokens, its sampling, its blocks, its output so far.

A request owns its random generator (np.random.default_rng(seed)), drawn from once per sampled
token: its text depends on its seed alone, never on which requests shared its batches. Its output
grows token by token; `tokens` (prompt + output) is what the KV cache must hold, `computed` how
many of those are in it. A preempted request drops its blocks and sets computed to 0: it is
recomputed from its tokens later (its generator state stays), so its answer is the same.
"""
import codecs
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

_ids = itertools.count()


@dataclass
class SamplingParams:
    """What to generate: OpenAI's max_tokens, temperature, top_p, stop, seed, logprobs (top n, 0 = chosen only)."""
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = None
    stop: tuple = ()               # stop strings: the text ends before the first one
    stop_token_ids: tuple = ()     # e.g. EOS, the chat template's end-of-turn token
    seed: int = None
    logprobs: int = None           # None: no log-probabilities; n >= 0: the chosen token's and the top n
    timeout: float = None          # seconds from arrival; past it the request ends with finish_reason "timeout"

    def check(self):
        """ValueError naming the field and its range, for values the engine cannot serve."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0 <= self.temperature <= 2 or math.isnan(self.temperature):
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in [0, 20], got {self.logprobs!r}")
        return self


@dataclass
class TokenOut:
    """One sampled token: its id, its log-probability, the top alternatives [(id, logprob), ...]."""
    id: int
    logprob: float
    top: list = field(default_factory=list)


def token_bytes(tokenizer, token):
    """The UTF-8 bytes of one token (a piece of a character for byte-level tokenizers)."""
    if hasattr(tokenizer, "decode_bytes"):
        return tokenizer.decode_bytes([int(token)])
    return tokenizer.decode([int(token)]).encode("utf-8", errors="surrogatepass")


class Request:
    """A prompt being served: created by Engine.add_request, updated by the engine thread only."""

    def __init__(self, prompt_ids, params, tokenizer, arrival, on_event=None):
        self.id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.arrival = arrival                     # time.monotonic() when it came
        self.on_event = on_event                   # on_event(request, kind): "token" or "finished"
        self.rng = np.random.default_rng(params.seed)
        self.outputs = []                          # TokenOut per generated token
        self.blocks = []                           # its block table
        self.computed = 0                          # tokens of self.tokens whose keys and values are cached
        self.block_hashes = []                     # chained hashes of its full blocks (blocks.chain_hashes)
        self.hashed = 0                            # full blocks registered in the prefix cache
        self.cached_prompt_tokens = 0              # prompt tokens found in the prefix cache
        self.preemptions = 0
        self.finish_reason = None                  # "stop", "length", "timeout", "cancelled", "error"
        self.error = None
        self.first_token_time = None               # time.monotonic() of the first sampled token
        self.end_time = None                       # and when it finished
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""                             # the output's text, cut before a stop string
        self.emitted = 0                           # characters of text already handed out by take_text

    @property
    def tokens(self):
        return self.prompt_ids + [o.id for o in self.outputs]

    @property
    def finished(self):
        return self.finish_reason is not None

    def append(self, out, context):
        """Add a sampled token; end the request at a stop token or string, max_tokens or the context."""
        p = self.params
        if out.id in p.stop_token_ids:
            self.finish_reason = "stop"
            self.text += self._decoder.decode(b"", final=True)
            return
        self.outputs.append(out)
        self.text += self._decoder.decode(token_bytes(self._tokenizer, out.id))
        for s in p.stop:
            cut = self.text.find(s)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
                return
        if len(self.outputs) >= p.max_tokens or len(self.prompt_ids) + len(self.outputs) >= context:
            self.finish_reason = "length"
            self.text += self._decoder.decode(b"", final=True)

    def take_text(self):
        """Text not handed out yet, holding back what may still become a stop string (all of it when done)."""
        end = len(self.text)
        if not self.finished and self.params.stop:
            end = max(self.emitted, end - max(len(s) for s in self.params.stop) + 1)
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def finish(self, reason, error=None):
        if not self.finished:
            self.finish_reason, self.error = reason, error
