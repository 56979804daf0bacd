"""Chat templates: the Jinja2 template a model's files carry (GGUF tokenizer.chat_template,
tokenizer_config.json's chat_template), rendered the way Hugging Face transformers renders it.

    render_chat(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                bos_token="<s>", eos_token="</s>")

As transformers' apply_chat_template: a sandboxed, immutable Jinja environment with trim_blocks and
lstrip_blocks, the loopcontrols extension, a tojson filter that keeps non-ASCII text, and the
globals raise_exception(message) and strftime_now(format). The template sees messages,
add_generation_prompt and the special tokens (bos_token, eos_token, ...).

end_of_turn_id: the token a reply ends with: <|im_end|> for ChatML templates (SmolLM2, Qwen),
<|eot_id|> for Llama 3, <end_of_turn> for Gemma, else the tokenizer's EOS.
"""
import json
from datetime import datetime
from functools import lru_cache

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


class TemplateError(ValueError):
    """The chat template failed (a raise_exception in it, or a Jinja error)."""


@lru_cache(maxsize=8)
def compile_template(template):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TemplateError("chat templates need jinja2: pip install 'minillm[pretrained]'") from None

    def raise_exception(message):
        raise TemplateError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as error:
        raise TemplateError(f"chat template does not compile: {error}") from None


def render_chat(template, messages, add_generation_prompt=True, **special_tokens):
    """The text of messages ([{"role", "content"}, ...]) through template."""
    import jinja2
    compiled = compile_template(template)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                               documents=None, **special_tokens)
    except jinja2.TemplateError as error:
        raise TemplateError(f"chat template failed: {error}") from None


def special_token_texts(tokenizer):
    """{"bos_token": text, "eos_token": text} of the tokenizer (empty strings where it has none)."""
    out = {}
    for key in ("bos", "eos", "unk"):
        i = getattr(tokenizer, f"{key}_token_id", None)
        out[f"{key}_token"] = tokenizer.decode_bytes([i]).decode("utf-8", "replace") if i is not None else ""
    return out


def end_of_turn_id(tokenizer):
    """The id that ends an assistant turn (see the module docstring), or None."""
    template = getattr(tokenizer, "chat_template", None) or ""
    specials = getattr(tokenizer, "special_tokens", {})
    for text in END_OF_TURN:
        if text in specials and text in template:
            return specials[text]
    return getattr(tokenizer, "eos_token_id", None)
