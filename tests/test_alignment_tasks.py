"""The reverse-a-word preference task: the checker, disjoint splits, records the checker agrees with, and
a starting point that learns the task's format."""
import numpy as np

from minillm.alignment import tasks
from minillm.alignment.preference_data import load_pairs


def test_satisfies_is_exactly_the_reversal():
    assert tasks.satisfies("cab=", "bac")
    assert not tasks.satisfies("cab=", "cab") and not tasks.satisfies("cab=", "bac\n") and not tasks.satisfies("cab=", "")


def test_train_and_heldout_prompts_are_disjoint():
    train = set(tasks.task_prompts(500, seed=0, split="train"))
    held = set(tasks.task_prompts(200, seed=0, split="heldout"))
    assert train and held and not train & held
    assert all(tasks.is_heldout(p[:-1]) for p in held)


def test_chosen_satisfies_the_rule_and_rejected_does_not(tmp_path):
    records = tasks.preference_records(200, seed=3)
    assert all(tasks.satisfies(r["prompt"], r["chosen"][:-1]) for r in records)
    assert not any(tasks.satisfies(r["prompt"], r["rejected"][:-1]) for r in records)
    assert tasks.preference_records(5, seed=3) == records[:5] != tasks.preference_records(5, seed=4)
    import json
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(load_pairs(str(path), tasks.task_tokenizer(), tasks.MODEL["block_size"])) == 200


def test_sft_records_are_correct_at_the_asked_rate():
    records = tasks.sft_records(2000, seed=0, correct_rate=0.4)
    rate = np.mean([tasks.satisfies(r["prompt"], r["completion"][:-1]) for r in records])
    assert 0.37 < rate < 0.43


def test_the_starting_point_learns_the_format():
    tok = tasks.task_tokenizer()
    model = tasks.sft_starting_point(tok, seed=0, steps=150)
    answers = sum(tasks.sample_answers(model, tok, tasks.task_prompts(20, seed=1, split="heldout"), samples=2), [])
    assert np.mean([len(a) == tasks.WORD_LENGTH and set(a) <= set(tasks.ALPHABET) for a in answers]) > 0.6
