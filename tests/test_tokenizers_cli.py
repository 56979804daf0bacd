"""`minillm tokenizer train | encode | decode` end to end on a small corpus in a temp dir."""
import json
import os

import pytest

from minillm.cli import main
from minillm.tokenizers import load

HERE = os.path.dirname(__file__)
CORPUS = os.path.join(HERE, "data", "tinyshakespeare_head.txt")


@pytest.mark.parametrize("kind,size", [("bpe", 400), ("unigram", 400), ("wordpiece", 300)])
def test_train_encode_decode_round_trip(kind, size, tmp_path, capsys):
    out = str(tmp_path / kind)
    assert main(["tokenizer", "train", "--kind", kind, "--vocab-size", str(size), "--input", CORPUS, CORPUS,
                 "--out", out, "--no-progress"]) == 0
    assert f"{kind} tokenizer with" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", out, "--text", "Before we proceed any further"]) == 0
    ids = capsys.readouterr().out.split()
    assert ids and all(i.isdigit() for i in ids)
    assert main(["tokenizer", "decode", "--tokenizer", out, "--ids", " ".join(ids)]) == 0
    expected = "before we proceed any further" if kind == "wordpiece" else "Before we proceed any further"
    assert capsys.readouterr().out == expected + "\n"


def test_encode_reads_stdin_and_prints_json_or_tokens(tmp_path, capsys, monkeypatch):
    import io
    out = str(tmp_path / "bpe")
    assert main(["tokenizer", "train", "--vocab-size", "300", "--input", CORPUS, "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("the king"))
    assert main(["tokenizer", "encode", "--tokenizer", out, "--format", "json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ids)))
    assert main(["tokenizer", "decode", "--tokenizer", out]) == 0
    assert capsys.readouterr().out == "the king\n"
    assert main(["tokenizer", "encode", "--tokenizer", out, "--text", "the king", "--format", "tokens"]) == 0
    assert "".join(json.loads(capsys.readouterr().out)) == "the king"


def test_errors_exit_1_with_a_message(tmp_path, capsys):
    out = str(tmp_path / "bpe")
    assert main(["tokenizer", "train", "--vocab-size", "100", "--input", CORPUS, "--out", out, "--no-progress"]) == 2
    assert "smaller than the 256 byte tokens" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--vocab-size", "300", "--input", str(tmp_path / "missing.txt"),
                 "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--vocab-size", "300", "--input", CORPUS, "--out", out, "--no-progress"]) == 0
    assert main(["tokenizer", "encode", "--tokenizer", out, "--text", "a <|endoftext|>"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "--tokenizer", out, "--ids", "195"]) == 2   # a lone 0xC3 byte
    assert "not valid UTF-8" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "nowhere"), "--ids", "1"]) == 2


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_train_shows_a_progress_bar_on_stderr(kind, tmp_path, capsys):
    assert main(["tokenizer", "train", "--kind", kind, "--vocab-size", "500", "--input", CORPUS,
                 "--out", str(tmp_path)]) == 0
    assert f"training {kind}" in capsys.readouterr().err


def test_tokenizer_without_an_action_prints_help_and_exits_2(capsys):
    assert main(["tokenizer"]) == 2
    assert "encode" in capsys.readouterr().out


def exit_code(args):
    try:
        return main(args)
    except SystemExit as stop:             # argparse's own usage errors
        return stop.code


def test_flags_do_what_they_say(tmp_path, capsys):
    wp = str(tmp_path / "wp")
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "300", "--input", CORPUS, "--out", wp,
                 "--cased", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", wp, "--text", "First Citizen", "--format", "tokens"]) == 0
    tokens = json.loads(capsys.readouterr().out)
    assert "".join(t.replace("##", "") for t in tokens) == "FirstCitizen"   # --cased keeps the case
    bpe = str(tmp_path / "bpe")
    assert main(["tokenizer", "train", "--vocab-size", "300", "--input", CORPUS, "--out", bpe, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", bpe, "--text", "a<|endoftext|>", "--allow-special"]) == 0
    ids = capsys.readouterr().out.split()                                  # the default format: ids
    eot = load(bpe).special_tokens["<|endoftext|>"]
    assert ids[-1] == str(eot) and all(i.isdigit() for i in ids)          # <|endoftext|> as its id
    assert main(["tokenizer", "decode", "--tokenizer", bpe, "--ids", ",".join(ids)]) == 0   # commas too
    assert capsys.readouterr().out == "a<|endoftext|>\n"


@pytest.mark.parametrize("args", [["train", "--input", CORPUS, "--out", "x"], ["train", "--vocab-size", "300",
                                  "--out", "x"], ["decode", "--ids", "1"], ["decode", "--tokenizer", "x", "--ids", "1",
                                                                             "--errors", "ignore"]])
def test_missing_or_bad_arguments_exit_2(args, capsys):
    assert exit_code(["tokenizer", *args]) == 2
    assert "error:" in capsys.readouterr().err
