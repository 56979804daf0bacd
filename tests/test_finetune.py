"""Supervised fine-tuning: the loss is on assistant / completion tokens only (prompt tokens carry no
gradient); packed examples do not attend to each other; bad data stops with one line naming the line,
exit 2, nothing written; --resume is bit-exact; the output loads in generate (base + adapter, and
merged); a NaN stops the run before the step is applied."""
import json
import os

import numpy as np
import pytest

from minillm.autograd import Tensor
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.finetune import FinetuneConfig, Finetuner, sft_loss
from minillm.models import DecoderLM, ModelConfig
from minillm.pretrained import load_pretrained
from minillm.sft_data import SFTDataError, encode_record, load_examples, pack_rows, packed_batch, pad_batch
from minillm.tokenizers import CharTokenizer
from minillm.train import TrainingDiverged

CHARS = "".join(sorted(set("abcdefghij<>=/ \nusertantsy")))
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
LLAMA = dict(block_size=32, n_layer=2, n_head=2, n_embd=64, d_ff=64, norm="rmsnorm", activation="swiglu",
             positions="rope", bias=False)


def tokenizer(chat=True):
    tok = CharTokenizer(CHARS)
    if chat:
        tok.chat_template = TEMPLATE
    return tok


def tiny_model(tok, seed=0, **overrides):
    return DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **{**LLAMA, **overrides}), rng=np.random.default_rng(seed))


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def copy_records(n, seed):
    rng = np.random.default_rng(seed)
    return [{"prompt": w + "=", "completion": w} for w in ("".join(rng.choice(list("abcdefghij"), 3)) for _ in range(n))]


@pytest.fixture
def base(tmp_path):
    tok = tokenizer(chat=False)
    save_checkpoint(tmp_path / "base", tiny_model(tok), tok, state={"step": 0})
    return str(tmp_path / "base")


def test_chat_records_train_only_the_assistant_turns():
    tok = tokenizer()
    record = {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"},
                           {"role": "user", "content": "de"}, {"role": "assistant", "content": "ed"}]}
    ids, trained = encode_record(record, tok, "x:1")
    assert tok.decode(ids) == "<user>abc\n<assistant>cba\n<user>de\n<assistant>ed\n"
    assert tok.decode(ids[trained]) == "cba\ned\n"           # the replies and their end-of-turn newline


def test_prompt_tokens_carry_no_gradient():
    tok = tokenizer(chat=False)
    model = tiny_model(tok)
    batch = pad_batch([encode_record({"prompt": "abc=", "completion": "cba"}, tok, "x:1"),
                       encode_record({"prompt": "de=", "completion": "ed"}, tok, "x:2")])
    logits = Tensor(model(batch["ids"]).data, requires_grad=True)
    loss, _, n = sft_loss(logits, batch["targets"])
    loss.backward()
    per_position = np.abs(logits.grad).sum(axis=-1)            # (B, T)
    predicts_completion = np.zeros_like(per_position, dtype=bool)
    predicts_completion[0, 3:6] = predicts_completion[1, 2:4] = True    # "=" -> c, c -> b, b -> a ("ed" likewise)
    assert n == predicts_completion.sum() == 5
    assert np.all(per_position[~predicts_completion] == 0)
    assert np.all(per_position[predicts_completion] > 0)


def test_packed_examples_do_not_attend_to_each_other():
    tok = tokenizer(chat=False)
    model = tiny_model(tok).eval()
    examples = [encode_record(r, tok, "x") for r in copy_records(5, 0)]
    rows = pack_rows(examples, 30)
    assert len(rows) == 2 and len(rows[0]) == 4                 # examples of 7 tokens, 4 to a row of 30
    batch = packed_batch(examples, rows)
    packed = model(batch["ids"], positions=batch["positions"], key_padding_mask=batch["mask"]).data[0]
    start = 0
    for ids, _ in examples[:4]:
        alone = model(ids[None]).data[0]
        np.testing.assert_allclose(packed[start:start + len(ids)], alone, rtol=1e-5, atol=1e-5)
        start += len(ids)
    leaky = model(batch["ids"], positions=batch["positions"]).data[0]      # without the mask they do
    second = slice(len(examples[0][0]), len(examples[0][0]) + len(examples[1][0]))
    assert np.abs(leaky[second] - packed[second]).max() > 1e-3


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "abc"}]}', "no assistant turn"),
    ("not json", "not valid JSON"),
    ('{"prompt": "' + "a" * 40 + '", "completion": "b"}', "longer than the model's context of 32"),
    ('{"text": "abc"}', "needs 'messages'"),
])
def test_bad_data_is_one_line_naming_the_line_and_nothing_is_written(tmp_path, base, capsys, line, message):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ab=", "completion": "ba"}, {"prompt": "c=", "completion": "c"},
                                              line])
    code = main(["finetune", "--model", base, "--data", data, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "d.jsonl:3: " in err and message in err
    assert not os.path.exists(tmp_path / "run")


def test_resume_is_bit_exact(tmp_path, base):
    data = write_jsonl(tmp_path / "d.jsonl", copy_records(40, 1))
    config = dict(method="lora", lora_r=2, target_modules="all-linear", lr=1e-2, batch_size=4, eval_interval=3,
                  lora_dropout=0.1)
    Finetuner(base, data, str(tmp_path / "a"), FinetuneConfig(max_iters=6, **config), progress=False).run()
    interrupted = Finetuner(base, data, str(tmp_path / "b"), FinetuneConfig(max_iters=6, **config), progress=False)
    step = interrupted.train_step

    def killed_after_the_checkpoint_of_step_3():
        if interrupted.step == 4:
            raise KeyboardInterrupt
        return step()
    interrupted.train_step = killed_after_the_checkpoint_of_step_3
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = Finetuner(base, data, str(tmp_path / "b"), FinetuneConfig(max_iters=6, **config), resume=True,
                        progress=False)
    assert resumed.step == 3
    resumed.run()
    a = load_pretrained(str(tmp_path / "a"))[0].state_dict()
    b = load_pretrained(str(tmp_path / "b"))[0].state_dict()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    logs = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if not r.get("eval")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_the_output_loads_in_generate_with_and_without_merge(tmp_path, base, method, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", copy_records(20, 2))
    out = str(tmp_path / "run")
    extra = ["--merge"] if method == "lora" else []
    extra += ["--scheme", "q8_0"] if method == "qlora" else []
    assert main(["finetune", "--model", base, "--data", data, "--out", out, "--method", method, "--max-iters", "3",
                 "--lr", "0.01", "--no-progress", "--plot"] + extra) == 0
    assert os.path.isfile(os.path.join(out, "loss.png"))
    tuned, tok = load_pretrained(out)
    if method != "full":
        assert os.path.isfile(os.path.join(out, "adapter", "adapter_model.safetensors"))
    if method == "lora":
        from minillm.lora import load_adapter
        adapted = load_adapter(load_pretrained(base)[0], os.path.join(out, "adapter"))
        ids = np.array([tok.encode("abc=")])
        np.testing.assert_allclose(tuned(ids).data, adapted(ids).data, rtol=1e-5, atol=1e-5)   # merged = base + adapter
    capsys.readouterr()
    assert main(["generate", "--model", out, "--prompt", "abc=", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert main(["finetune", "--model", base, "--data", data, "--out", out, "--no-progress"]) == 2   # holds a run


def test_a_nan_loss_stops_before_the_step(tmp_path, base):
    data = write_jsonl(tmp_path / "d.jsonl", copy_records(10, 3))
    run = Finetuner(base, data, str(tmp_path / "run"), FinetuneConfig(method="full", max_iters=2), progress=False)
    run.model.wte.weight.data[:] = np.nan
    with pytest.raises(TrainingDiverged, match="loss became nan at step 0"):
        run.run()
    assert not os.path.exists(tmp_path / "run" / "latest")


def test_full_fine_tuning_of_a_gguf_file_updates_its_weights(tmp_path):
    """A GGUF's float tensors load as read-only views of the file; full fine-tuning trains them all."""
    pytest.importorskip("gguf")
    from minillm.io.gguf_write import export_gguf
    tok = tokenizer(chat=False)
    path = str(tmp_path / "m.gguf")
    export_gguf(tiny_model(tok), tok, path)                   # f32: every tensor a view of the file
    before = {n: p.data.copy() for n, p in load_pretrained(path, dequantize=True)[0].named_parameters()}
    config = FinetuneConfig(method="full", lr=1e-2, max_iters=2, batch_size=4, eval_interval=2, eval_fraction=0.0)
    run = Finetuner(path, write_jsonl(tmp_path / "d.jsonl", copy_records(8, 0)), str(tmp_path / "run"), config,
                    progress=False, log=lambda message: None)
    run.run()
    after = dict(run.model.named_parameters())
    assert all(not np.array_equal(after[n].data, before[n]) for n in before), "every weight trains"
    assert np.array_equal(load_pretrained(path, dequantize=True)[0].blocks[0].norm1.weight.data,
                          before["blocks.0.norm1.weight"])      # the file itself is untouched
