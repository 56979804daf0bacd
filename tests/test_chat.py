"""Chat: templates render as transformers renders them; a session keeps one KV cache across turns
(running only the new tokens) and replies as a fresh generation on the whole prompt would; replies
stop at the end-of-turn token; the CLI takes a scripted conversation on standard input."""
import io
import sys

import numpy as np
import pytest

from minillm.chat import ChatSession
from minillm.cli import main
from minillm.generate import generate
from minillm.io.chat_template import TemplateError, end_of_turn_id, render_chat

from pretrained_models import smollm2

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
FANCY = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('no system') }}{% endif %}{{ bos_token }}"
         "{% for m in messages %}{% if loop.index > 9 %}{% break %}{% endif %}\n  [{{ m['role'] }}] "
         "{{ m['content'] | tojson }}\n{% endfor %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ünïcödé \"quoted\" 日本"},
            {"role": "assistant", "content": "OK."}, {"role": "user", "content": "Again"}]


@pytest.mark.parametrize("template", [CHATML, FANCY])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_templates_render_as_transformers_renders_them(template, generation_prompt):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<s>",
                                              eos_token="</s>")
    theirs = hf.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                    add_generation_prompt=generation_prompt)
    ours = render_chat(template, MESSAGES, generation_prompt, bos_token="<s>", eos_token="</s>")
    assert ours == theirs


def test_template_errors_are_clear():
    with pytest.raises(TemplateError, match="no system"):
        render_chat(FANCY, MESSAGES[1:], True)
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat("{% for %}", MESSAGES, True)


def test_chatml_turns_end_at_im_end():
    _, tok = smollm2()
    assert end_of_turn_id(tok) == tok.special_tokens["<|im_end|>"]


def test_session_reuses_its_cache_and_replies_like_a_fresh_generation():
    model, tok = smollm2(dequantize=True)
    session = ChatSession(model, tok, temperature=0, max_new_tokens=16)
    fed = []
    forward = model.forward
    model.forward = lambda ids, *a, **k: (fed.append(np.asarray(ids).shape[1]), forward(ids, *a, **k))[1]
    try:
        first = "".join(session.reply("What is the capital of France?"))
        prompt_one = fed[0]
        fed.clear()
        cached = len(session.cached)
        second = "".join(session.reply("And of Italy?"))
    finally:
        del model.forward
    assert "Paris" in first and second
    assert fed[0] < prompt_one and cached - fed[0] < len(session.cached)   # only the new turn was run
    assert len(session.messages) == 4 and session.messages[-1]["content"] == second
    # what a fresh greedy generation on the whole conversation so far says for turn two
    session.messages.pop()
    fresh = generate(model, [session._prompt_ids()], 16, temperature=0, stop_tokens=[session.end_id])[0]
    assert tok.decode(fresh) == second and len(fresh) < 16         # and it stopped at <|im_end|>


def test_cli_chat_on_a_scripted_conversation(monkeypatch, capsys):
    import minillm.pretrained
    # the float32 model, whose greedy answers are transformers' (the quantized one's drift: docs/pretrained.md)
    monkeypatch.setattr(minillm.pretrained, "load_pretrained", lambda source, dequantize=False: smollm2(dequantize=True))
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n\n/reset\nSay hi.\n"))
    assert main(["chat", "--model", "smollm2-135m-instruct", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    replies = out.strip("\n").split("\n")
    assert "Paris" in out and "(conversation reset)" in err and len([r for r in replies if r.strip()]) >= 2


def test_cli_generate_and_info_on_the_real_model(monkeypatch, capsys):
    import minillm.pretrained
    monkeypatch.setattr(minillm.pretrained, "load_pretrained", lambda source, dequantize=False: smollm2())
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompt", "The capital of France is",
                 "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is") and "Paris" in out
    assert main(["info", "--model", "smollm2-135m-instruct"]) == 0
    out = capsys.readouterr().out
    assert "30 layers, width 576, 9 heads / 3 kv heads" in out and "q4_1 x210" in out and "<|im_start|>" in out
