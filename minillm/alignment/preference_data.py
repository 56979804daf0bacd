"""Preference data: JSONL records of a prompt and two replies, the chosen one preferred, -> token ids and
a loss mask for both, batched as pairs.

Each line of the file is one JSON object, plain text or a chat:

    {"prompt": "7+5=", "chosen": "12", "rejected": "13"}
    {"prompt": [{"role": "user", "content": "7+5?"}], "chosen": "12", "rejected": "13"}
    {"prompt": [{"role": "user", "content": "7+5?"}], "chosen": [{"role": "assistant", "content": "12"}],
     "rejected": [{"role": "assistant", "content": "13"}]}

A plain record is rendered as SFT's {"prompt", "completion"} (prompt + reply + EOS, when the tokenizer
has one); a chat as SFT's {"messages": prompt + reply} with the model's chat template (the reply and
the template's end-of-turn marker). Both go through minillm/sft_data.py's encode_record, so they
get the same checks and the same one-line SFTDataError naming file:line; on top of those a pair
needs a non-empty prompt, non-empty chosen and rejected replies that differ, and both rows within
the context. Only the final reply is scored: an assistant turn inside a chat prompt is context.

A batch of B pairs is 2B rows, the B chosen rows then the B rejected rows (trl's "concatenated
forward": one model call scores both), right-padded to the longest row:

    ids (2B, T), targets (2B, T) = the next token on reply positions, -100 on the prompt and padding,
    mask (2B, T) bool, True on real tokens (the key padding mask; pads sit after every real token).
"""
import numpy as np

from ..sft_data import IGNORE, SFTDataError, encode_record, read_records, split_examples, targets_of

__all__ = ["SFTDataError", "encode_pair", "load_pairs", "pair_batch", "split_pairs", "last_token_index"]

split_pairs = split_examples            # (train, eval) lists of pairs: a seeded shuffle, as for SFT


def _reply_messages(reply, name, where):
    """A reply (str, or a list of messages ending with the assistant's) as a list of messages."""
    if isinstance(reply, str):
        if not reply.strip():
            raise SFTDataError(f"{where}: '{name}' is empty, so there is nothing to compare")
        return [{"role": "assistant", "content": reply}]
    if isinstance(reply, list) and reply and isinstance(reply[-1], dict) and reply[-1].get("role") == "assistant":
        if not isinstance(reply[-1].get("content"), str) or not reply[-1]["content"].strip():
            raise SFTDataError(f"{where}: '{name}' ends with an empty assistant message")
        return reply
    raise SFTDataError(f"{where}: '{name}' must be the reply's text or a list of messages ending with the "
                       "assistant's")


def _final_reply_only(trained):
    """The trained mask with everything before the last run of trained tokens (earlier assistant turns
    of a chat prompt) made context."""
    trained = trained.copy()
    starts = np.flatnonzero(trained & ~np.concatenate([[False], trained[:-1]]))
    if len(starts):
        trained[:starts[-1]] = False
    return trained


def encode_pair(record, tokenizer, where):
    """((chosen ids, trained), (rejected ids, trained)) of one record (see the module docstring)."""
    if not isinstance(record, dict):
        raise SFTDataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
    if missing:
        raise SFTDataError(f"{where}: a preference record needs 'prompt', 'chosen' and 'rejected'; "
                           f"{', '.join(repr(k) for k in missing)} missing")
    prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        raise SFTDataError(f"{where}: 'prompt' is empty")
    if chosen == rejected:
        raise SFTDataError(f"{where}: 'chosen' and 'rejected' are the same reply, so there is no preference")
    rows = []
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        try:
            rows.append(_encode_row(prompt, reply, name, tokenizer, where))
        except SFTDataError:
            raise
        except ValueError as error:                     # the tokenizer's (a character outside its vocabulary)
            raise SFTDataError(f"{where}: {name}: {error}") from None
    return rows[0], rows[1]


def _encode_row(prompt, reply, name, tokenizer, where):
    """(ids, trained) of the prompt followed by one reply."""
    if isinstance(prompt, str):
        if not isinstance(reply, str):
            raise SFTDataError(f"{where}: with a text 'prompt', '{name}' must be text too (a chat prompt is "
                               "a list of messages)")
        if not reply.strip():
            raise SFTDataError(f"{where}: '{name}' is empty, so there is nothing to compare")
        ids, trained = encode_record({"prompt": prompt, "completion": reply}, tokenizer, where)
    elif isinstance(prompt, list):
        messages = prompt + _reply_messages(reply, name, where)
        ids, trained = encode_record({"messages": messages}, tokenizer, where)
        trained = _final_reply_only(trained)
    else:
        raise SFTDataError(f"{where}: 'prompt' must be text or a list of messages, got {type(prompt).__name__}")
    return ids, trained


def load_pairs(path, tokenizer, context):
    """[(chosen, rejected)] of every record of path, each row an (ids, trained) pair checked to fit."""
    pairs = []
    for number, record in read_records(path):
        where = f"{path}:{number}"
        pair = encode_pair(record, tokenizer, where)
        for name, (ids, trained) in zip(("chosen", "rejected"), pair):
            if len(ids) > context:
                raise SFTDataError(f"{where}: the {name} example is {len(ids)} tokens, longer than the model's "
                                   f"context of {context}; shorten it or drop it")
            if not trained[1:].any():
                raise SFTDataError(f"{where}: no trained token follows the first one in the {name} reply")
            if tokenizer.vocab_size and ids.max(initial=0) >= tokenizer.vocab_size:
                raise SFTDataError(f"{where}: token id {ids.max()} is outside the vocabulary")
        if np.array_equal(pair[0][0], pair[1][0]):
            raise SFTDataError(f"{where}: 'chosen' and 'rejected' encode to the same tokens, so there is no preference")
        pairs.append(pair)
    return pairs


def pair_batch(pairs, pad_id=0):
    """{"ids", "targets", "mask"} (2B, T): the chosen rows, then the rejected rows, right-padded."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    T = max(len(ids) for ids, _ in rows)
    batch = {"ids": np.full((len(rows), T), pad_id, np.int64), "targets": np.full((len(rows), T), IGNORE, np.int64),
             "mask": np.zeros((len(rows), T), bool)}
    for b, (ids, trained) in enumerate(rows):
        batch["ids"][b, :len(ids)] = ids
        batch["targets"][b, :len(ids)] = targets_of(ids, trained)
        batch["mask"][b, :len(ids)] = True
    return batch


def last_token_index(mask):
    """(B,) index of each row's last real token of a right-padded (B, T) key padding mask."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or not mask.any(axis=1).all():
        raise ValueError(f"last_token_index: mask must be (B, T) bool with a real token in every row, got shape "
                         f"{mask.shape}")
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
