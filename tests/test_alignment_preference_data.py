"""Preference data: both rows of a pair share the prompt and score only their reply; bad records are one
SFTDataError naming file:line; a batch is the chosen rows then the rejected rows, right-padded."""
import json

import numpy as np
import pytest

from minillm.alignment.preference_data import SFTDataError, encode_pair, last_token_index, load_pairs, pair_batch
from minillm.tokenizers import CharTokenizer

CHARS = "".join(sorted(set("abcdefghij<>=/ \nusertantsy+0123456789")))
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def tokenizer(chat=True):
    tok = CharTokenizer(CHARS)
    if chat:
        tok.chat_template = TEMPLATE
    return tok


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_plain_pairs_score_only_the_reply():
    tok = tokenizer(chat=False)
    (c_ids, c_trained), (r_ids, r_trained) = encode_pair({"prompt": "7+5=", "chosen": "12", "rejected": "3"}, tok, "x:1")
    assert tok.decode(c_ids) == "7+5=12" and tok.decode(r_ids) == "7+5=3"
    assert tok.decode(c_ids[c_trained]) == "12" and tok.decode(r_ids[r_trained]) == "3"


@pytest.mark.parametrize("chosen", ["12", [{"role": "assistant", "content": "12"}]])
def test_chat_pairs_score_only_the_final_reply(chosen):
    tok = tokenizer()
    prompt = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"},
              {"role": "user", "content": "7+5"}]
    (c_ids, c_trained), (r_ids, r_trained) = encode_pair({"prompt": prompt, "chosen": chosen, "rejected": "13"},
                                                         tok, "x:1")
    assert tok.decode(c_ids) == "<user>1+1\n<assistant>2\n<user>7+5\n<assistant>12\n"
    assert tok.decode(c_ids[c_trained]) == "12\n"               # the earlier assistant turn is context
    assert tok.decode(r_ids[r_trained]) == "13\n"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "ab", "chosen": "c"}', "'rejected' missing"),
    ('{"prompt": "", "chosen": "c", "rejected": "d"}', "'prompt' is empty"),
    ('{"prompt": "ab", "chosen": "", "rejected": "d"}', "'chosen' is empty"),
    ('{"prompt": "ab", "chosen": "c", "rejected": "c"}', "the same reply"),
    ('{"prompt": "ab", "chosen": "c", "rejected": ["d"]}', "must be text too"),
    ('{"prompt": [{"role": "user", "content": "a"}], "chosen": "c", "rejected": [{"role": "user", "content": "d"}]}',
     "ending with the assistant's"),
    ('{"prompt": "ab", "chosen": "' + "c" * 40 + '", "rejected": "d"}', "longer than the model's context of 32"),
    ('{"prompt": "ab", "chosen": "c", "rejected": "Z"}', "not in the tokenizer's vocabulary"),
    ('not json', "not valid JSON"),
])
def test_a_bad_record_is_one_error_naming_the_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "ab", "chosen": "c", "rejected": "d"}, line])
    with pytest.raises(SFTDataError, match=message) as error:
        load_pairs(path, tokenizer(), context=32)
    assert str(error.value).startswith(f"{path}:2: ")


def test_a_batch_is_chosen_rows_then_rejected_rows_right_padded(tmp_path):
    tok = tokenizer(chat=False)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "11"},
                                              {"prompt": "7+5=", "chosen": "12", "rejected": "3"}])
    batch = pair_batch(load_pairs(path, tok, context=32))
    assert batch["ids"].shape == batch["targets"].shape == batch["mask"].shape == (4, 6)
    assert [tok.decode(row[m]) for row, m in zip(batch["ids"], batch["mask"])] == ["1+1=2", "7+5=12", "1+1=11", "7+5=3"]
    scored = [tok.decode(t[t >= 0]) for t in batch["targets"]]
    assert scored == ["2", "12", "11", "3"]                    # next-token targets on the reply only
    assert (batch["targets"][~batch["mask"]] == -100).all()
    np.testing.assert_array_equal(last_token_index(batch["mask"]), [4, 5, 5, 4])
