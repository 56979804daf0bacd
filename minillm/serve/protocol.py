"""OpenAI's request and response shapes for completions and chat completions, as plain dicts.

parse_* read a request body into the engine's SamplingParams (or raise ApiError, which the app
turns into OpenAI's error shape {"error": {"message", "type", "param", "code"}}); the *_chunk and
*_response functions build the JSON the `openai` client reads. No web framework here.
"""
import time
import uuid

from .request import SamplingParams


class ApiError(Exception):
    """An error to answer with: HTTP status, message, OpenAI error type, the parameter at fault."""

    def __init__(self, status, message, kind="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _field(body, name, kinds, default, check=None, what=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {what or ' or '.join(k.__name__ for k in kinds)}, got {value!r}",
                       param=name)
    if check is not None and not check(value):
        raise ApiError(400, f"'{name}' must be {what}, got {value!r}", param=name)
    return value


def parse_sampling(body, default_max_tokens, chat):
    """SamplingParams and n from the fields both endpoints share."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    if chat:
        logprobs = None
        if _field(body, "logprobs", (bool,), False, what="a boolean"):
            logprobs = _field(body, "top_logprobs", (int,), 0, lambda v: 0 <= v <= 20, "an integer in [0, 20]")
    else:
        logprobs = _field(body, "logprobs", (int,), None, lambda v: 0 <= v <= 5, "an integer in [0, 5]")
    length_field = "max_completion_tokens" if chat and body.get("max_tokens") is None else "max_tokens"
    params = SamplingParams(
        max_tokens=_field(body, length_field, (int,), default_max_tokens, lambda v: v >= 1, "an integer >= 1"),
        temperature=float(_field(body, "temperature", (int, float), 1.0, lambda v: 0 <= v <= 2, "a number in [0, 2]")),
        top_p=float(_field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")),
        stop=tuple(stop), seed=_field(body, "seed", (int,), None, what="an integer"), logprobs=logprobs)
    n = _field(body, "n", (int,), 1, lambda v: 1 <= v <= 16, "an integer in [1, 16]")
    stream = _field(body, "stream", (bool,), False, what="a boolean")
    options = _field(body, "stream_options", (dict,), {}, what="an object")
    include_usage = bool(options.get("include_usage", False))
    return params, n, stream, include_usage


def parse_prompt(body):
    """The prompt of /v1/completions: a string (or a list of one string, or of token ids)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (or one list of token ids)", param="prompt")
    return prompt


def parse_messages(body):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message must be an object with a 'role' and a 'content'", param="messages")
        content = m.get("content")
        if isinstance(content, list):                     # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise ApiError(400, "a message's 'content' must be a string", param="messages")
        out.append({"role": m["role"], "content": content})
    return out


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens, completion_tokens, cached_tokens=0):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_logprobs(tokens, token_text):
    """Completions' logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for t in tokens:
        text = token_text(t.id)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({token_text(i): lp for i, lp in t.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(tokens, token_text):
    """Chat's logprobs: {"content": [{token, logprob, bytes, top_logprobs}, ...]}."""
    def entry(i, lp):
        text = token_text(i)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [dict(entry(t.id, t.logprob), top_logprobs=[entry(i, lp) for i, lp in t.top])
                        for t in tokens]}


def completion_choice(index, text, finish_reason, logprobs=None):
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(index, text, finish_reason, logprobs=None):
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish_reason}


def chat_delta(index, text, finish_reason, logprobs=None, first=False):
    delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def response(kind, rid, model, choices, usage_block=None, created=None):
    """A whole response or one streamed chunk: kind is "text_completion" or "chat.completion[.chunk]"."""
    body = {"id": rid, "object": kind, "created": created or int(time.time()), "model": model, "choices": choices}
    if usage_block is not None or not kind.endswith("chunk"):
        body["usage"] = usage_block
    return body


def finish_reason(reason):
    """The engine's reasons in OpenAI's words (a cancelled or timed-out request never answers)."""
    return {"stop": "stop", "length": "length"}.get(reason, reason)
