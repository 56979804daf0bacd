"""Constitutional AI (minillm/alignment/constitution.py, judge.py, constitution_files.py and
`minillm constitution`): the loop runs end to end on a tiny random model and writes SFT data that
`minillm finetune` loads and preference pairs with their judgements; a judgement's p(A), p(B) are
the softmax of the model's logits at the two label tokens at the prompt's last position; templates'
placeholders are checked; bad files are one line naming file:line, exit 2; a seed reproduces."""
import json
import string

import numpy as np
import pytest

from minillm.alignment.constitution import ChatFormat, LoopConfig, judge, prompt_text, run_loop
from minillm.alignment.constitution_files import (ConstitutionFileError, check_template, read_principles,
                                                  read_prompts, read_templates)
from minillm.alignment.judge import LabelTokenError, choice_probabilities, label_token_ids
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.cli_constitution import write_outputs
from minillm.models import DecoderLM, ModelConfig
from minillm.sft_data import load_examples
from minillm.tokenizers import CharTokenizer

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
SHORT = {"answer": "{prompt}", "critique": "C {prompt}: {answer} vs {principle}", "revision": "R {answer} by {critique}",
         "judgement": "J {principle}? A: {answer_a} B: {answer_b}. A or B?\n"}
PRINCIPLES = "# a comment\nBe kind.\n\nBe honest.\nBe brief.\n"
PROMPTS = ['{"prompt": "Hi there?"}', '{"prompt": "What is 2+2?"}',
           '{"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Name a cat."}]}',
           '{"messages": [{"role": "user", "content": "I cook."}, {"role": "assistant", "content": "Nice."}, '
           '{"role": "user", "content": "What next?"}]}']


def tokenizer(chat=True):
    tok = CharTokenizer(sorted(set(string.printable)))
    if chat:
        tok.chat_template = TEMPLATE
    return tok


def tiny_model(tok, seed=0, scale=8.0):
    """A random model whose weights are scaled up (norms aside) so that its next token depends on the
    whole prompt, not almost only on the last character: its judgements differ between the orders."""
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=640, n_layer=1, n_head=2, n_embd=32, d_ff=64,
                         norm="rmsnorm", activation="swiglu", positions="rope", bias=False)
    model = DecoderLM(config, rng=np.random.default_rng(seed))
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data = (p.data * scale).astype(p.data.dtype)
    return model


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def files(tmp_path):
    """(principles, prompts, short templates) files and a tiny checkpoint (its tokenizer has no chat template)."""
    tok = tokenizer(chat=False)
    save_checkpoint(tmp_path / "model", tiny_model(tok), tok, state={"step": 0})
    return {"model": str(tmp_path / "model"), "principles": write(tmp_path / "principles.txt", PRINCIPLES),
            "prompts": write(tmp_path / "prompts.txt", "Hi there?\nWhat is 2+2?\n# skipped\nName a cat.\n"),
            "templates": write(tmp_path / "t.json", json.dumps(SHORT)), "out": str(tmp_path / "out")}


def run_cli(files, *extra, **changes):
    f = {**files, **changes}
    return main(["constitution", "--model", f["model"], "--principles", f["principles"], "--prompts", f["prompts"],
                 "--out", f["out"], "--templates", f["templates"], "--max-new-tokens", "6", "--temperature", "1",
                 "--no-progress", *extra])


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def loop(seed=0, temperature=1.0, templates=SHORT, tok=None):
    tok = tok or tokenizer()
    prompts = [{"messages": json.loads(p).get("messages") or [{"role": "user", "content": json.loads(p)["prompt"]}],
                "source": f"p:{k + 1}"} for k, p in enumerate(PROMPTS)]
    config = LoopConfig(max_new_tokens=6, temperature=temperature, seed=seed, batch_size=2)
    return run_loop(tiny_model(tok), tok, prompts, ["Be kind.", "Be honest.", "Be brief."], templates, config), tok


# ---- end to end

def test_the_cli_loop_writes_sft_preferences_and_a_transcript(files, capsys):
    assert run_cli(files) == 0
    out = files["out"]
    transcript = read_jsonl(f"{out}/transcript.jsonl")
    assert [t["source"] for t in transcript] == [f"{files['prompts']}:{n}" for n in (1, 2, 4)]
    for t in transcript:
        assert set(t["steps"]) == {"answer", "critique", "revision"} and len(t["judgements"]) == 2
        assert t["principle"] in ("Be kind.", "Be honest.", "Be brief.")
        assert t["steps"]["critique"]["request"] == (f"C {t['prompt'][0]['content']}: {t['steps']['answer']['reply']} "
                                                     f"vs {t['principle']}")
    tok = tokenizer(chat=False)
    sft = read_jsonl(f"{out}/sft.jsonl")                       # no chat template: prompt / completion records
    assert sft == [{"prompt": t["prompt"][0]["content"], "completion": t["steps"]["revision"]["reply"]}
                   for t in transcript if t["steps"]["revision"]["reply"]]
    assert len(load_examples(f"{out}/sft.jsonl", tok, 640)) == len(sft) > 0
    preferences = read_jsonl(f"{out}/preferences.jsonl")
    assert len(preferences) == sum(t["preferred"] is not None for t in transcript) > 0
    for p in preferences:
        assert set(p) == {"prompt", "chosen", "rejected", "principle", "p_chosen", "chosen_is", "judgements"}
        assert isinstance(p["prompt"], str) and p["chosen"] != p["rejected"] and 0.5 < p["p_chosen"] <= 1
    from minillm.alignment.preference_data import load_pairs      # what --method reward / dpo read
    pairs = load_pairs(f"{out}/preferences.jsonl", tok, 640)
    assert len(pairs) == len(preferences)
    assert [tok.decode(chosen[0][chosen[1]]) for chosen, _ in pairs] == [p["chosen"] for p in preferences]
    assert json.load(open(f"{out}/templates.json")) == {**read_templates(), **SHORT}
    run = json.load(open(f"{out}/run.json"))
    assert run["counts"] == {"prompts": 3, "sft": len(sft), "preferences": len(preferences),
                             "revised_preferred": sum(p["chosen_is"] == "revised" for p in preferences)}


def test_chat_outputs_load_as_finetuning_data_and_pair_the_two_answers(tmp_path):
    items, tok = loop()
    counts = write_outputs(str(tmp_path), items, SHORT, {}, chat=True)
    examples = load_examples(str(tmp_path / "sft.jsonl"), tok, 640)
    assert len(examples) == counts["sft"] == len(items)
    assert tok.decode(examples[2][0][examples[2][1]]) == items[2]["steps"]["revision"]["reply"] + "\n"
    assert tok.decode(examples[3][0]).startswith("<user>I cook.\n<assistant>Nice.\n<user>What next?\n<assistant>")
    for p, item in zip(read_jsonl(tmp_path / "preferences.jsonl"), items):
        assert p["prompt"] == item["prompt"]                        # the chat, system message and all
        answers = {item["steps"]["answer"]["reply"], item["steps"]["revision"]["reply"]}
        assert {p["chosen"], p["rejected"]} == answers
        chosen_revised = p["chosen"] == item["steps"]["revision"]["reply"]
        assert (item["p_revised"] > 0.5) == chosen_revised == (p["chosen_is"] == "revised")


def test_min_margin_keeps_only_the_confident_pairs(tmp_path):
    items, _ = loop()
    margin = sorted(abs(item["p_revised"] - 0.5) for item in items)[-2]         # the second largest
    write_outputs(str(tmp_path), items, SHORT, {}, chat=True, min_margin=margin)
    kept = read_jsonl(tmp_path / "preferences.jsonl")
    assert len(kept) == 2 and all(p["p_chosen"] >= 0.5 + margin for p in kept)


def test_the_steps_feed_each_other_through_the_templates():
    items, _ = loop()
    assert items[3]["steps"]["critique"]["request"].startswith("C User: I cook.\nAssistant: Nice.\nUser: What next?: ")
    assert prompt_text(items[3]["prompt"]) == "User: I cook.\nAssistant: Nice.\nUser: What next?"
    assert prompt_text(items[2]["prompt"]) == "Name a cat."                       # the system message left out
    for item in items:
        s = item["steps"]
        assert s["answer"]["request"] == item["prompt"][-1]["content"]
        assert s["revision"]["request"] == f"R {s['answer']['reply']} by {s['critique']['reply']}"
        initial, revised = s["answer"]["reply"], s["revision"]["reply"]
        assert [j["request"] for j in item["judgements"]] == [
            f"J {item['principle']}? A: {a} B: {b}. A or B?\n" for a, b in ((initial, revised), (revised, initial))]


# ---- the judgement

def direct_label_probabilities(model, ids, a, b):
    """softmax over the full forward's logits at the last position, restricted to the two labels."""
    z = model(np.array([ids])).data[0, -1].astype(np.float64)              # (V,) at the prompt's last token
    pair = np.exp(z[[a, b]] - z[[a, b]].max())
    return pair / pair.sum(), np.exp(z[[a, b]] - z.max()).sum() / np.exp(z - z.max()).sum()


def test_a_judgement_is_the_softmax_of_the_logits_at_the_two_label_tokens():
    tok = tokenizer()
    model, fmt = tiny_model(tok, seed=3), ChatFormat(tok)
    texts = [fmt.text([{"role": "user", "content": c}]) for c in ("Which? A or B\n", "A longer one: A or B, say\n")]
    ids = [fmt.ids(t) for t in texts]
    labels = [label_token_ids(tok, t) for t in texts]
    assert labels[0] == [tok.encode("A")[0], tok.encode("B")[0]]
    p, mass = choice_probabilities(model, ids, labels, batch_size=2)   # one left-padded batch
    for k in range(2):
        expected, expected_mass = direct_label_probabilities(model, ids[k], *labels[k])
        np.testing.assert_allclose(p[k], expected, rtol=1e-4)
        np.testing.assert_allclose(mass[k], expected_mass, rtol=1e-4)


def test_both_orders_are_judged_and_averaged_for_the_revision():
    items, tok = loop()
    model, fmt = tiny_model(tok), ChatFormat(tok)
    a, b = tok.encode("A")[0], tok.encode("B")[0]
    assert max(abs(item["p_revised"] - 0.5) for item in items) > 0.01     # the orders disagree: a swap would show
    for item in items:
        system = [m for m in item["prompt"] if m["role"] == "system"]
        first, second = (direct_label_probabilities(model, fmt.ids(fmt.text(system + [
            {"role": "user", "content": j["request"]}])), a, b)[0] for j in item["judgements"])
        assert [j["A"] for j in item["judgements"]] == ["initial", "revised"]
        np.testing.assert_allclose([item["judgements"][0]["p_A"], item["judgements"][1]["p_A"]],
                                   [first[0], second[0]], rtol=1e-4)
        np.testing.assert_allclose(item["p_revised"], (first[1] + second[0]) / 2, rtol=1e-4)


def test_identical_answers_make_no_preference_pair(monkeypatch):
    items, tok = loop()
    item = {**items[0], "steps": {**items[0]["steps"], "revision": dict(items[0]["steps"]["answer"])}}
    biased = (np.array([[0.9, 0.1], [0.7, 0.3]]), np.ones(2))     # a judge whose two orders disagree
    monkeypatch.setattr("minillm.alignment.constitution.choice_probabilities", lambda *args: biased)
    judged = judge(tiny_model(tok), ChatFormat(tok), [item], SHORT["judgement"], 2)
    assert judged[0]["p_revised"] == pytest.approx(0.4) and judged[0]["preferred"] is None


class MergingTokenizer:
    """Characters as ids, except that "\\nA" is one token (as a BPE may merge a label with the newline)."""

    def encode(self, text, allowed_special=None):
        ids, k = [], 0
        while k < len(text):
            if text.startswith("\nA", k):
                ids.append(1000)
                k += 2
            else:
                ids.append(ord(text[k]))
                k += 1
        return ids


def test_a_label_merged_with_the_prompt_end_is_an_error():
    assert label_token_ids(MergingTokenizer(), "which? ") == [ord("A"), ord("B")]
    with pytest.raises(LabelTokenError, match="does not make 'A' one token"):
        label_token_ids(MergingTokenizer(), "which?\n")


# ---- templates

@pytest.mark.parametrize("step, template, message", [
    ("critique", "Critique {answer} by {principle} and {rules}", r"unknown placeholder \{rules\}"),
    ("critique", "Critique {answer}", r"lacks the placeholder \{principle\}"),
    ("judgement", "{answer_a} {answer_b}", r"lacks the placeholder \{principle\}"),
    ("answer", "Answer {prompt} {answer}", r"unknown placeholder \{answer\}"),
    ("revision", "Fix {answer} {critique", "expected '}'"),
    ("revision", "Fix {answer.text} {critique}", "not a plain named placeholder"),
    ("revision", "Fix {answer!r} {critique}", "not a plain named placeholder"),
    ("revision", "Fix {0} {answer} {critique}", "not a plain named placeholder"),
])
def test_template_placeholders_are_checked(step, template, message):
    with pytest.raises(ConstitutionFileError, match=message):
        check_template(step, template, "t.json")


def test_a_templates_file_overrides_some_steps_and_keeps_the_defaults(tmp_path):
    path = write(tmp_path / "t.json", json.dumps({"critique": "Is {answer} {principle}? {{literal}}"}))
    templates, defaults = read_templates(path), read_templates()
    assert templates == {**defaults, "critique": "Is {answer} {principle}? {{literal}}"}
    assert set(defaults) == {"answer", "critique", "revision", "judgement"}
    with pytest.raises(ConstitutionFileError, match="unknown step 'critic'"):
        read_templates(write(tmp_path / "u.json", json.dumps({"critic": "{answer}"})))


# ---- bad files

@pytest.mark.parametrize("which, name, text, where", [
    ("principles", "p.txt", "Be kind.\n# c\nBe kind.\n", "p.txt:3: the principle repeats line 1"),
    ("principles", "p.txt", "# only a comment\n\n", "p.txt: no principles"),
    ("principles", "p.txt", b"Be \xff kind\n", "p.txt: not UTF-8"),
    ("prompts", "q.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', "q.jsonl:2: not valid JSON"),
    ("prompts", "q.jsonl", '{"prompt": "a", "messages": []}\n', "q.jsonl:1: a record is a JSON object with one of"),
    ("prompts", "q.jsonl", '\n{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
     "q.jsonl:2: the last message must be the user's"),
    ("prompts", "q.jsonl", '{"messages": [{"role": "robot", "content": "a"}]}\n', "q.jsonl:1: message 0 must be"),
    ("prompts", "q.jsonl", '{"prompt": "  "}\n', "q.jsonl:1: 'prompt' must be a non-empty string"),
    ("prompts", "q.txt", "\n# nothing\n", "q.txt: no prompts"),
    ("templates", "t.json", '{"critique":\n "{answer}"\n', "t.json:3: not valid JSON"),
    ("templates", "t.json", '{"critique": "{answer} {oops}"}', "t.json: template 'critique' has unknown placeholder"),
    ("templates", "t.json", '["{answer}"]', "t.json: templates are a JSON object"),
])
def test_bad_files_are_one_line_errors_naming_the_file_and_line(files, tmp_path, capsys, which, name, text, where):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert run_cli(files, **{which: str(path)}) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{tmp_path}/{where}" in err, err
    assert not (tmp_path / "out").exists()


def test_a_chat_prompt_needs_a_chat_template(files, tmp_path, capsys):
    prompts = write(tmp_path / "q.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
                                          '"content": "b"}, {"role": "user", "content": "c"}]}\n')
    assert run_cli(files, prompts=prompts) == 2
    assert "needs a chat template" in capsys.readouterr().err


def test_text_and_jsonl_prompts_read_the_same(tmp_path):
    text = read_prompts(write(tmp_path / "q.txt", "# c\n  Hi there?\n\nWhat is 2+2?\n"))
    jsonl = read_prompts(write(tmp_path / "q.jsonl", '{"prompt": "Hi there?", "id": 7}\n\n{"prompt": "What is 2+2?"}\n'))
    assert [p["messages"] for p in text] == [p["messages"] for p in jsonl] == [
        [{"role": "user", "content": "Hi there?"}], [{"role": "user", "content": "What is 2+2?"}]]
    assert [p["source"] for p in jsonl] == [f"{tmp_path}/q.jsonl:1", f"{tmp_path}/q.jsonl:3"]
    assert read_principles(write(tmp_path / "p.txt", PRINCIPLES)) == ["Be kind.", "Be honest.", "Be brief."]


# ---- the output directory, seeds

def test_an_output_directory_with_files_needs_overwrite(files, capsys):
    assert run_cli(files) == 0
    before = open(f"{files['out']}/transcript.jsonl").read()
    assert run_cli(files, "--seed", "5") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert open(f"{files['out']}/transcript.jsonl").read() == before
    assert run_cli(files, "--seed", "5", "--overwrite") == 0
    assert open(f"{files['out']}/transcript.jsonl").read() != before


def test_a_seed_reproduces_every_text_and_another_seed_changes_them():
    first, _ = loop(seed=7)
    again, _ = loop(seed=7)
    other, _ = loop(seed=8)
    assert first == again
    texts = [[item["principle"]] + [item["steps"][s]["reply"] for s in item["steps"]] for item in first]
    assert texts != [[item["principle"]] + [item["steps"][s]["reply"] for s in item["steps"]] for item in other]


def test_the_default_judgement_labels_are_single_tokens_for_smollm2():
    from pretrained_models import smollm2
    from minillm.alignment.constitution import check_judgement_labels
    _, tok = smollm2()
    ids = check_judgement_labels(tok, read_templates())
    assert [tok.decode([i]) for i in ids] == ["A", "B"]


def test_the_bundled_example_files_and_default_templates_are_valid():
    import os
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "constitution")
    assert len(read_principles(os.path.join(root, "principles.txt"))) == 4
    prompts = read_prompts(os.path.join(root, "prompts.jsonl"))
    assert len(prompts) == 12 and any(len(p["messages"]) > 1 for p in prompts)
    assert set(read_templates()) == {"answer", "critique", "revision", "judgement"}


def test_an_output_directory_another_process_writes_is_refused(files, capsys):
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from minillm.files import DirectoryLock; "
                               "DirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               files["out"]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_cli(files) == 2
        assert "in use by another minillm process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
