"""Fine-tuning teaches, shown on a task with a checkable answer, in seconds: a tiny char model
pretrained here on the built-in corpus (tiny Shakespeare) and on lines copying 3-letter words
("abc:abc") is LoRA-tuned (Finetuner) to a mapping it does not know (each letter shifted by 3:
"abc:def"); held-out exact match goes from 0 to near 1. And a LoRA run's output, loaded without
--merge, generates with its adapter."""
import gzip
import json
import os

import numpy as np
import pytest

from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.data import BUILTIN_CORPUS
from minillm.finetune import FinetuneConfig, Finetuner
from minillm.lora import load_adapter
from minillm.models import DecoderLM, ModelConfig
from minillm.optim import AdamW, param_groups
from minillm.pretrained import load_base, load_pretrained
from minillm.sft_eval import exact_match
from minillm.tokenizers import CharTokenizer

LETTERS = "abcdefghij"
MODEL = dict(block_size=32, n_layer=2, n_head=4, n_embd=64, d_ff=128, norm="rmsnorm", activation="swiglu",
             positions="rope", bias=False)


def tokenizer():
    return CharTokenizer("".join(sorted(LETTERS + "=\n")))


def words(n, rng):
    return ["".join(rng.choice(list(LETTERS), 3)) for _ in range(n)]


def shifted(word):
    return "".join(LETTERS[(LETTERS.index(c) + 3) % len(LETTERS)] for c in word)


def records(ws, answer, separator="="):
    """Prompt "abc=" (or the separator given), completion the answer and a newline (the char vocabulary has no EOS: the reply is
    compared after strip(), and max_new_tokens 4 leaves room for exactly the answer and the newline)."""
    return [{"prompt": w + separator, "completion": answer(w) + "\n"} for w in ws]


def pretrain_on_the_corpus_and_copying(path, steps=250, seed=0):
    """A tiny DecoderLM trained on the built-in corpus and, in half of each batch, on lines "abc:abc\n":
    it learns the shape of the task (a word, ":", three letters, a newline) and to copy, not the
    mapping. Its vocabulary is the corpus's characters. Saved as a checkpoint at path."""
    corpus = gzip.open(BUILTIN_CORPUS, "rt", encoding="utf-8").read()
    tok, rng = CharTokenizer("".join(sorted(set(corpus)))), np.random.default_rng(seed)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **MODEL), rng=np.random.default_rng(seed))
    text = np.array(tok.encode(corpus[:200_000]))
    copying = np.array(tok.encode("".join(f"{w}:{w}\n" for w in words(4000, rng))))
    optimizer = AdamW(param_groups(model, 0.0), 3e-3)
    T = MODEL["block_size"]
    for _ in range(steps):
        starts = [(copying, s) for s in rng.integers(0, len(copying) - T - 1, 8)] + \
                 [(text, s) for s in rng.integers(0, len(text) - T - 1, 8)]
        x = np.stack([stream[s:s + T] for stream, s in starts])
        y = np.stack([stream[s + 1:s + T + 1] for stream, s in starts])
        model.loss(x, y).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_checkpoint(path, model, tok, state={"step": steps})
    return str(path)


def test_lora_sft_raises_held_out_exact_match_on_a_mapping_the_base_does_not_know(tmp_path):
    base = pretrain_on_the_corpus_and_copying(tmp_path / "base")
    rng = np.random.default_rng(1)
    train_words = words(300, rng)
    held = [w for w in dict.fromkeys(words(200, rng)) if w not in set(train_words)][:40]
    data = tmp_path / "shift.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(train_words, shifted, ":")))
    model, tok = load_pretrained(base)
    copies, _ = exact_match(model, tok, records(held, lambda w: w, ":"), max_new_tokens=4)
    before, _ = exact_match(model, tok, records(held, shifted, ":"), max_new_tokens=4)
    assert copies >= 0.5 and before == 0.0          # it has the task's shape, not the mapping
    config = FinetuneConfig(method="lora", lora_r=8, lora_alpha=16, target_modules="all-linear", lr=1e-2,
                            max_iters=60, batch_size=16, eval_interval=60, eval_fraction=0.0)
    Finetuner(base, str(data), str(tmp_path / "run"), config, progress=False, log=lambda message: None).run()
    tuned, _ = load_pretrained(str(tmp_path / "run"))          # base + adapter/, as generate and chat load it
    after, replies = exact_match(tuned, tok, records(held, shifted, ":"), max_new_tokens=4)
    assert after >= 0.9, replies[:5]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_lora_output_loaded_without_merge_generates_with_its_adapter(tmp_path, method):
    """The inference path (DecoderLM.infer, which generate and the server run) runs unmerged adapters
    (LoraLinear.infer); load_pretrained folds a LoRA adapter in (plain layers, the fast path) and keeps
    a QLoRA base quantized under its adapter."""
    tok = tokenizer()
    base = str(tmp_path / "base")
    save_checkpoint(base, DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **MODEL), rng=np.random.default_rng(0)),
                    tok, state={"step": 0})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(words(20, np.random.default_rng(0)), shifted)))
    out = str(tmp_path / "run")
    scheme = ["--scheme", "q8_0"] if method == "qlora" else []
    assert main(["finetune", "--model", base, "--data", str(data), "--out", out, "--method", method, "--max-iters", "3",
                 "--lr", "0.05", "--no-progress", *scheme]) == 0             # peft's default targets: q_proj, v_proj
    adapted, _ = load_base(base, method, "q8_0")
    load_adapter(adapted, os.path.join(out, "adapter"))
    ids = np.array([tok.encode("abc=def\nghi=")])
    expected = adapted.eval()(ids).data                        # forward runs the adapters, and so does infer
    np.testing.assert_allclose(adapted.infer(ids), expected, rtol=1e-5, atol=1e-5)
    tuned, _ = load_pretrained(out)
    error = np.abs(tuned.infer(ids) - expected).max()
    effect = np.abs(load_pretrained(base)[0].infer(ids) - expected).max()         # what the adapter changed
    # LoRA: the adapter folded into float32 weights, float rounding (measured 1e-7). QLoRA: the quantized
    # base with the adapter on top, what training ran.
    assert error < 1e-5 and effect > 0.1
