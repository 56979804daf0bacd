"""Constitutional AI (Bai et al. 2022): a model improves its own answers against written principles,
and judges its own answer pairs, making SFT data and preference data without a human label.

For each prompt, with a principle P drawn at random (seeded) from the constitution:

    1. answer     the model answers the prompt                       -> initial
    2. critique   it critiques initial against P                     -> critique
    3. revision   it rewrites initial using the critique              -> revised
    4. judgement  "which answer better follows P?", shown both orders: (A = initial, B = revised) and
                  (A = revised, B = initial); each order's p(A), p(B) come from the next-token
                  probabilities of the two labels (judge.py), and
                      p(revised) = (p_1(B) + p_2(A)) / 2
                  so a judge that always prefers the first (or the second) position cancels out.

Each step is one user message built from a template (constitution_files.py) and rendered with the
model's chat template (the raw text if the tokenizer has none), after the prompt's earlier turns for
the answer and after its system messages only for the others (their {prompt} is the conversation); steps 1-3 are batched through
generate (a KV cache, left-padded batches), step 4 is one forward per judgement prompt.

The revisions are the SFT data (user prompt -> revised answer); the pair (initial, revised), the
one with p > 1/2 as "chosen", is the preference data. Pairs whose two answers are the same text,
or judged exactly even, are left out. Generation is sampled with temperature (0: greedy) from
seeds derived from one --seed: [seed, step, first prompt of the batch], and the principles from
[seed, 0], so a rerun with the same inputs, seed and batch size reproduces every text.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..generate import generate
from ..io.chat_template import end_of_turn_id, render_chat, special_token_texts
from .constitution_files import fill
from .judge import LABELS, choice_probabilities, label_token_ids

GENERATED = ("answer", "critique", "revision")


@dataclass
class LoopConfig:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: Optional[float] = None
    seed: int = 0
    batch_size: int = 8


class ChatFormat:
    """The text and token ids of a step's prompt for one model: [messages] through the model's chat
    template with the generation prompt (or, without a template, the last message's text as is)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = getattr(tokenizer, "chat_template", None) or None
        self.specials = special_token_texts(tokenizer)
        self.stops = {t for t in (end_of_turn_id(tokenizer), getattr(tokenizer, "eos_token_id", None)) if t is not None}

    def text(self, messages):
        if self.template is None:
            if len(messages) > 1:
                raise ValueError("constitution: a chat prompt of several messages needs a chat template, and this "
                                 "model's tokenizer has none; give single-turn prompts")
            return messages[-1]["content"]
        return render_chat(self.template, messages, True, **self.specials)

    def ids(self, text):
        ids = list(self.tokenizer.encode(text, allowed_special="all"))
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids


def prompt_text(messages):
    """{prompt} of the critique, revision and judgement templates: the user's message, or for a longer
    chat its turns as "User: ..." / "Assistant: ..." lines (system messages left out)."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def draw_principles(n, principles, seed):
    """The index of the principle for each of n prompts (uniform, reproducible from seed)."""
    return np.random.default_rng([seed, 0]).integers(len(principles), size=n)


def _user(messages, content, step):
    """The chat of a step's request: for the answer, the prompt's earlier turns and the request; for the
    other steps (whose {prompt} holds the whole conversation), the prompt's system messages and it."""
    context = messages[:-1] if step == "answer" else [m for m in messages if m["role"] == "system"]
    return context + [{"role": "user", "content": content}]


def _generate_step(model, fmt, requests, step, config, sources, progress):
    """[(reply text, truncated)] for each request text, generated in batches."""
    context = model.config.block_size
    replies = []
    for start in range(0, len(requests), config.batch_size):
        ids = [fmt.ids(text) for text in requests[start:start + config.batch_size]]
        for k, row in enumerate(ids):
            if len(row) >= context:
                raise ValueError(f"constitution: the {step} prompt of {sources[start + k]} is {len(row)} tokens, "
                                 f"with no room left in the model's context of {context}; shorten the prompt or "
                                 f"the {step} template")
        out = generate(model, ids, config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                       seed=[config.seed, 1 + GENERATED.index(step), start], stop_tokens=fmt.stops)
        room = [min(config.max_new_tokens, context - len(row)) for row in ids]
        replies += [(fmt.tokenizer.decode(o).strip(), len(o) >= r) for o, r in zip(out, room)]
        if progress is not None:
            progress.update(len(ids))
    return replies


def check_judgement_labels(tokenizer, templates):
    """The label ids after a judgement prompt of this template, checked before the loop runs."""
    fmt = ChatFormat(tokenizer)
    text = fmt.text([{"role": "user", "content": fill(templates["judgement"], prompt="?", answer_a="a",
                                                     answer_b="b", principle="p")}])
    return label_token_ids(tokenizer, text)


def run_loop(model, tokenizer, prompts, principles, templates, config, progress=None):
    """One record per prompt: {"source", "prompt" (messages), "principle", "steps": {step: {"request",
    "reply", "truncated"}}, "judgements": [two orders], "p_revised", "preferred"}; see the module
    docstring. progress: None or a tqdm-like bar (update(n), set_description(text))."""
    fmt = ChatFormat(tokenizer)
    drawn = draw_principles(len(prompts), principles, config.seed)
    items = [{"source": p["source"], "prompt": p["messages"], "principle": principles[i], "steps": {}}
             for p, i in zip(prompts, drawn)]
    sources = [item["source"] for item in items]

    def step(name, request_of):
        if progress is not None:
            progress.set_description(name)
        requests = [request_of(item) for item in items]
        texts = [fmt.text(_user(item["prompt"], r, name)) for item, r in zip(items, requests)]
        for item, request, (reply, truncated) in zip(items, requests, _generate_step(
                model, fmt, texts, name, config, sources, progress)):
            item["steps"][name] = {"request": request, "reply": reply, "truncated": truncated}

    def values(item):
        s = item["steps"]
        return {"prompt": prompt_text(item["prompt"]), "principle": item["principle"],
                "answer": s["answer"]["reply"], "critique": s["critique"]["reply"] if "critique" in s else ""}

    step("answer", lambda item: fill(templates["answer"], prompt=item["prompt"][-1]["content"]))
    step("critique", lambda item: fill(templates["critique"], **values(item)))
    step("revision", lambda item: fill(templates["revision"], **values(item)))
    judge(model, fmt, items, templates["judgement"], config.batch_size, progress)
    return items


def judge(model, fmt, items, template, batch_size, progress=None):
    """Fill each item's "judgements", "p_revised" and "preferred" (see the module docstring)."""
    if progress is not None:
        progress.set_description("judgement")
    requests, ids, labels = [], [], []
    for item in items:
        initial, revised = item["steps"]["answer"]["reply"], item["steps"]["revision"]["reply"]
        for a, b in ((initial, revised), (revised, initial)):
            request = fill(template, prompt=prompt_text(item["prompt"]), principle=item["principle"],
                           answer_a=a, answer_b=b)
            text = fmt.text(_user(item["prompt"], request, "judgement"))
            requests.append(request)
            ids.append(fmt.ids(text))
            labels.append(label_token_ids(fmt.tokenizer, text))
    p, mass = choice_probabilities(model, ids, labels, batch_size, None if progress is None else progress.update)
    for k, item in enumerate(items):
        first, second = 2 * k, 2 * k + 1
        item["judgements"] = [
            {"A": "initial", "B": "revised", "request": requests[first], "p_A": float(p[first, 0]),
             "p_B": float(p[first, 1]), "label_mass": float(mass[first])},
            {"A": "revised", "B": "initial", "request": requests[second], "p_A": float(p[second, 0]),
             "p_B": float(p[second, 1]), "label_mass": float(mass[second])}]
        item["p_revised"] = float((p[first, 1] + p[second, 0]) / 2)
        same = item["steps"]["answer"]["reply"] == item["steps"]["revision"]["reply"]
        item["preferred"] = (None if same or item["p_revised"] == 0.5 else
                             "revised" if item["p_revised"] > 0.5 else "initial")
    return items


# ---- the records the loop's outputs hold

def sft_record(item, chat=True):
    """{"messages": the prompt's chat + the revised answer} ({"prompt": the user's text, "completion": the
    revised answer} for a model without a chat template), or None if the revision is empty."""
    revised = item["steps"]["revision"]["reply"]
    if not revised:
        return None
    if not chat:
        return {"prompt": prompt_text(item["prompt"]), "completion": revised}
    return {"messages": item["prompt"] + [{"role": "assistant", "content": revised}]}


def preference_record(item, chat=True, min_margin=0.0):
    """{"prompt", "chosen", "rejected", "principle", "p_chosen", "chosen_is", "judgements"} or None
    when the item has no preference, or p_chosen is below 1/2 + min_margin. prompt: the messages
    (chat) or the user's text."""
    if item["preferred"] is None or abs(item["p_revised"] - 0.5) < min_margin:
        return None
    initial, revised = item["steps"]["answer"]["reply"], item["steps"]["revision"]["reply"]
    chosen, rejected = (revised, initial) if item["preferred"] == "revised" else (initial, revised)
    p = item["p_revised"] if item["preferred"] == "revised" else 1 - item["p_revised"]
    return {"prompt": item["prompt"] if chat else prompt_text(item["prompt"]), "chosen": chosen,
            "rejected": rejected, "principle": item["principle"], "p_chosen": p, "chosen_is": item["preferred"],
            "judgements": [{k: j[k] for k in ("A", "B", "p_A", "p_B", "label_mass")} for j in item["judgements"]]}


def position_bias(items):
    """The mean p(A) over every judgement: 0.5 for a judge without a preference for either position."""
    values = [j["p_A"] for item in items for j in item["judgements"]]
    return float(np.mean(values)) if values else float("nan")


__all__ = ["LABELS", "LoopConfig", "ChatFormat", "run_loop", "judge", "sft_record", "preference_record",
           "position_bias", "check_judgement_labels", "draw_principles", "prompt_text"]
