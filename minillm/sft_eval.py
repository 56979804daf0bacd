"""Checking what fine-tuning taught: exact match of greedy replies on held-out records, and a task with
a checkable answer made in-process (no data is downloaded).

    records = date_format_records(300, seed=0)          # "Write 2021-03-05 as DD/MM/YYYY." -> "05/03/2021"
    exact_match(model, tokenizer, records[:50])         # the fraction of replies equal to the answer

A chat record's prompt is its messages before the last assistant turn, rendered with the model's
chat template and the generation prompt; a prompt/completion record's is its prompt. A reply is
the greedy continuation up to the end-of-turn token (or EOS), compared after stripping whitespace.
"""
import numpy as np

from .generate import generate
from .io.chat_template import end_of_turn_id, render_chat, special_token_texts

MONTHS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def date_format_records(n, seed=0, chat=True):
    """n records asking to rewrite an ISO date (YYYY-MM-DD) as DD/MM/YYYY; the answer is only the date."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        year, month = int(rng.integers(1950, 2040)), int(rng.integers(1, 13))
        day = int(rng.integers(1, MONTHS[month - 1] + 1))
        question = f"Write the date {year}-{month:02d}-{day:02d} in the format DD/MM/YYYY."
        answer = f"{day:02d}/{month:02d}/{year}"
        records.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
                       if chat else {"prompt": question + " ", "completion": answer})
    return records


def prompt_and_answer(record, tokenizer):
    """(prompt ids, the expected reply text) of a record."""
    if "messages" in record:
        messages = record["messages"]
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        text = render_chat(tokenizer.chat_template, messages[:last], True, **special_token_texts(tokenizer))
        answer = messages[last]["content"]
    else:
        text, answer = record["prompt"], record["completion"]
    ids = list(tokenizer.encode(text, allowed_special="all"))
    bos = getattr(tokenizer, "bos_token_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids, answer


def exact_match(model, tokenizer, records, max_new_tokens=24, batch_size=16):
    """(fraction of records whose greedy reply equals the answer, the replies)."""
    stops = {t for t in (end_of_turn_id(tokenizer), getattr(tokenizer, "eos_token_id", None)) if t is not None}
    pairs = [prompt_and_answer(r, tokenizer) for r in records]
    replies = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        out = generate(model, [p for p, _ in chunk], max_new_tokens, temperature=0.0, stop_tokens=stops)
        replies += [tokenizer.decode(ids) for ids in out]
    hits = sum(reply.strip() == answer.strip() for reply, (_, answer) in zip(replies, pairs))
    return hits / max(len(records), 1), replies
