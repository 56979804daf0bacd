"""Prompts for RL fine-tuning (PPO, GRPO): a JSONL file, one prompt per line, either

    {"prompt": "2+3?"}                                      the user's words, as one user turn
    {"messages": [{"role": "system", ...}, {"role": "user", "content": "2+3?"}]}

rendered with the model's chat template and its generation prompt (a "prompt" record is used as
plain text when the tokenizer has no template; a "messages" record needs one and must not end on
an assistant turn). Each prompt must leave room for max_new_tokens in the context. A bad record is a
PromptDataError naming the file and line, raised before anything is written.
"""
from dataclasses import dataclass

from ..io.chat_template import TemplateError, render_chat, special_token_texts
from ..sft_data import SFTDataError, read_records


class PromptDataError(SFTDataError):
    """A record of the prompt file cannot be used; the message names the file and line."""


@dataclass
class Prompt:
    text: str           # the user's words (the last user turn of a chat): what a program checker reads
    rendered: str       # what the policy continues: the template's rendering with the generation prompt
    ids: list           # rendered's token ids (with the BOS the tokenizer adds)
    where: str          # file:line


def _render(record, tokenizer, where):
    template = getattr(tokenizer, "chat_template", None)
    specials = special_token_texts(tokenizer) if template else {}
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise PromptDataError(f"{where}: 'messages' must be a non-empty list of {{\"role\": str, \"content\": str}}")
        if messages[-1]["role"] == "assistant":
            raise PromptDataError(f"{where}: the chat ends on an assistant turn; a prompt ends where the policy answers")
        if not template:
            raise PromptDataError(f"{where}: a 'messages' record needs a chat template, and this model's tokenizer "
                                  "has none; use {\"prompt\": ...} records")
        users = [m["content"] for m in messages if m["role"] == "user"]
        text = users[-1] if users else messages[-1]["content"]
    elif isinstance(record.get("prompt"), str) and record["prompt"]:
        text = record["prompt"]
        if not template:
            return text, text
        messages = [{"role": "user", "content": text}]
    else:
        raise PromptDataError(f"{where}: a record needs a non-empty string 'prompt' or a 'messages' list")
    try:
        return text, render_chat(template, messages, True, **specials)
    except TemplateError as error:
        raise PromptDataError(f"{where}: {error}") from None


def load_prompts(path, tokenizer, context, max_new_tokens):
    """[Prompt] of every record of path (module docstring); each fits context with max_new_tokens to spare."""
    prompts = []
    bos = getattr(tokenizer, "bos_token_id", None)
    for number, record in read_records(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise PromptDataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
        text, rendered = _render(record, tokenizer, where)
        ids = list(tokenizer.encode(rendered, allowed_special="all"))
        if getattr(tokenizer, "add_bos_token", False) and bos is not None:
            ids = [bos] + ids
        if len(ids) + max_new_tokens > context:
            raise PromptDataError(f"{where}: the prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} "
                                  f"that passes the model's context of {context}; shorten it or lower "
                                  "--max-new-tokens")
        if tokenizer.vocab_size and max(ids) >= tokenizer.vocab_size:
            raise PromptDataError(f"{where}: token id {max(ids)} is outside the vocabulary")
        prompts.append(Prompt(text, rendered, ids, where))
    return prompts


def stop_ids(tokenizer):
    """The ids that end an answer: EOS and the template's end-of-turn token."""
    from ..io.chat_template import end_of_turn_id
    ids = {getattr(tokenizer, "eos_token_id", None), end_of_turn_id(tokenizer)}
    return sorted(int(i) for i in ids if i is not None)
