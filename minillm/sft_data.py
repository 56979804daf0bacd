"""Supervised fine-tuning data: JSONL records -> token ids and a loss mask, batched or packed.

Each line of the file is one JSON object, either a chat or a prompt and its completion:

    {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]}
    {"prompt": "2+3=", "completion": "5"}

A chat is rendered with the model's chat template (minillm/io/chat_template.py). Assistant turn k is
trained on: its text is render(messages[:k+1]) minus render(messages[:k], add_generation_prompt=True),
the reply and the template's end-of-turn marker, so the model learns to stop. Everything else (system,
user, the template's headers) is context only. A prompt/completion record is prompt + completion +
EOS, the completion and EOS trained. The loss is on trained tokens only:

    targets[t] = ids[t + 1] if token t + 1 is trained, else -100 (ignored by F.cross_entropy)

Batches pad on the right to the longest example (pads are after every real token, so causal attention
never sees them; their targets are -100). Packing instead fills rows of the context length with whole
examples, one after the other; each example keeps positions 0, 1, ... and a (B, T, T) attention mask
lets a query see only keys of its own example (no cross-example attention).

A bad record (not JSON, no assistant turn, a template that fails, longer than the context) is an
SFTDataError naming the file and the line.
"""
import json

import numpy as np

from .io.chat_template import TemplateError, render_chat, special_token_texts

IGNORE = -100


class SFTDataError(ValueError):
    """A record of the fine-tuning data cannot be used; the message names the file and line."""


def read_records(path):
    """[(line number, record)] of a JSONL file; blank lines are skipped."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise SFTDataError(f"{path}:{number}: not valid JSON ({error})") from None
                records.append((number, record))
    except UnicodeDecodeError as error:
        raise SFTDataError(f"{path}: not UTF-8 text ({error})") from None
    if not records:
        raise SFTDataError(f"{path}: no records (one JSON object per line, with 'messages' or 'prompt'/'completion')")
    return records


def _encode(tokenizer, text):
    return list(tokenizer.encode(text, allowed_special="all")) if text else []


def _chat_pieces(messages, tokenizer, where):
    """[(text, trained)] of a chat: the context before each assistant turn, then the turn."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                                 isinstance(m.get("content"), str) for m in messages):
        raise SFTDataError(f"{where}: 'messages' must be a list of {{\"role\": str, \"content\": str}}")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise SFTDataError(f"{where}: the record has no assistant turn, so nothing to learn")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise SFTDataError(f"{where}: a 'messages' record needs a chat template, and this model's tokenizer has "
                           "none; use 'prompt'/'completion' records")
    specials = special_token_texts(tokenizer)
    pieces, done = [], ""
    try:
        for k in turns:
            prompt = render_chat(template, messages[:k], True, **specials)
            full = render_chat(template, messages[:k + 1], False, **specials)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise SFTDataError(f"{where}: the chat template does not render turn {k} as a continuation of the "
                                   "turns before it, so the assistant's tokens cannot be marked")
            pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
    except TemplateError as error:
        raise SFTDataError(f"{where}: {error}") from None
    return pieces


def encode_record(record, tokenizer, where):
    """(ids, trained) int64 / bool arrays of one record (see the module docstring)."""
    if not isinstance(record, dict):
        raise SFTDataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        pieces = _chat_pieces(record["messages"], tokenizer, where)
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        if not record["completion"]:
            raise SFTDataError(f"{where}: the completion is empty, so nothing to learn")
        pieces = [(record["prompt"], False), (record["completion"], True)]
    else:
        raise SFTDataError(f"{where}: a record needs 'messages' (a chat) or string 'prompt' and 'completion'")
    ids, trained = [], []
    bos = getattr(tokenizer, "bos_token_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None:
        ids, trained = [bos], [False]
    for text, train in pieces:
        piece = _encode(tokenizer, text)
        ids += piece
        trained += [train] * len(piece)
    eos = getattr(tokenizer, "eos_token_id", None)
    if "messages" not in record and eos is not None:
        ids.append(eos)
        trained.append(True)
    return np.array(ids, np.int64), np.array(trained, bool)


def load_examples(path, tokenizer, context):
    """[(ids, trained)] of every record of path, each checked to fit the context length."""
    examples = []
    for number, record in read_records(path):
        where = f"{path}:{number}"
        ids, trained = encode_record(record, tokenizer, where)
        if len(ids) > context:
            raise SFTDataError(f"{where}: the example is {len(ids)} tokens, longer than the model's context of "
                               f"{context}; shorten it or drop it")
        if not trained[1:].any():
            raise SFTDataError(f"{where}: no trained token follows the first one (an empty reply?)")
        if tokenizer.vocab_size and ids.max(initial=0) >= tokenizer.vocab_size:
            raise SFTDataError(f"{where}: token id {ids.max()} is outside the vocabulary")
        examples.append((ids, trained))
    return examples


def targets_of(ids, trained):
    """targets[t] = ids[t + 1] where token t + 1 is trained, else IGNORE; the last one IGNORE."""
    targets = np.full(len(ids), IGNORE, np.int64)
    targets[:-1] = np.where(trained[1:], ids[1:], IGNORE)
    return targets


def pad_batch(examples, pad_id=0):
    """{"ids", "targets"} (B, T), right-padded to the longest example."""
    T = max(len(ids) for ids, _ in examples)
    batch = {"ids": np.full((len(examples), T), pad_id, np.int64), "targets": np.full((len(examples), T), IGNORE, np.int64)}
    for row, (ids, trained) in enumerate(examples):
        batch["ids"][row, :len(ids)] = ids
        batch["targets"][row, :len(ids)] = targets_of(ids, trained)
    return batch


def pack_rows(examples, context):
    """Examples laid end to end into rows of at most context tokens (greedy, in order): [[index, ...]]."""
    rows, row, used = [], [], 0
    for i, (ids, _) in enumerate(examples):
        if row and used + len(ids) > context:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += len(ids)
    if row:
        rows.append(row)
    return rows


def packed_batch(examples, rows, pad_id=0):
    """{"ids", "targets", "positions" (B, T), "mask" (B, T, T) bool} for packed rows of examples."""
    T = max(sum(len(examples[i][0]) for i in row) for row in rows)
    B = len(rows)
    ids = np.full((B, T), pad_id, np.int64)
    targets = np.full((B, T), IGNORE, np.int64)
    positions = np.zeros((B, T), np.int64)
    segment = np.full((B, T), -1, np.int64)
    for b, row in enumerate(rows):
        start = 0
        for s, i in enumerate(row):
            e_ids, trained = examples[i]
            end = start + len(e_ids)
            ids[b, start:end], targets[b, start:end] = e_ids, targets_of(e_ids, trained)
            positions[b, start:end], segment[b, start:end] = np.arange(len(e_ids)), s
            start = end
        segment[b, start:] = len(row)            # padding: a segment of its own
    mask = segment[:, :, None] == segment[:, None, :]
    return {"ids": ids, "targets": targets, "positions": positions, "mask": mask}


def split_examples(examples, eval_fraction, seed):
    """(train, eval) lists: a seeded shuffle, eval_fraction of the examples held out (at least one when
    the fraction is > 0 and there are two or more)."""
    order = np.random.default_rng([seed, 2]).permutation(len(examples))
    n_eval = int(round(eval_fraction * len(examples)))
    if eval_fraction > 0 and len(examples) > 1:
        n_eval = min(max(n_eval, 1), len(examples) - 1)
    held = set(order[:n_eval].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
