"""`minillm embed` on a small random BERT checkpoint: one JSON array per text (--text or --input),
the cosine matrix with --similarity, the pooling flags, and one-line errors for bad input. The real
all-MiniLM-L6-v2 through the same command is in tests/test_encoder_oracle.py."""
import json

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.embed import embed
from minillm.models import EncoderConfig, EncoderModel
from minillm.tokenizers import WordPieceTokenizer

TEXT = "the cat sat on the mat. a dog ran in the park. the sun is warm today. " * 20
TEXTS = ["the cat sat", "a dog ran in the park today", "warm"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tokenizer = WordPieceTokenizer.train(TEXT, 80)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = EncoderModel(config, rng=np.random.default_rng(0))
    directory = tmp_path_factory.mktemp("bert")
    ckpt.save_checkpoint(directory, model, tokenizer, state={"step": 0})
    return str(directory), model, tokenizer


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(stdout):
    return np.array([json.loads(line) for line in stdout.splitlines()])


def test_embed_prints_one_normalised_array_per_text_as_the_library_does(bert, capsys):
    directory, model, tokenizer = bert
    code, stdout, err = run(capsys, "embed", "--model", directory, *sum([["--text", t] for t in TEXTS], []))
    assert code == 0, err
    got = rows(stdout)
    assert got.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, embed(model, tokenizer, TEXTS), atol=1e-7)    # printed to 8 digits


def test_input_file_similarity_and_pooling_flags(bert, capsys, tmp_path):
    directory, model, tokenizer = bert
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS[:2]) + "\n\n" + TEXTS[2] + "\n")                # the blank line is skipped
    code, stdout, err = run(capsys, "embed", "--model", directory, "--input", str(path), "--similarity")
    assert code == 0, err
    matrix = rows(stdout)
    vectors = embed(model, tokenizer, TEXTS)
    np.testing.assert_allclose(matrix, vectors @ vectors.T, atol=1e-6)
    code, stdout, err = run(capsys, "embed", "--model", directory, "--input", str(path), "--pooling", "cls", "max",
                            "--no-normalize")
    assert code == 0, err
    np.testing.assert_allclose(rows(stdout), embed(model, tokenizer, TEXTS, pooling=("cls", "max"), normalize=False),
                               rtol=1e-6, atol=1e-7)
    assert rows(stdout).shape == (3, 32)                                            # two modes side by side


@pytest.mark.parametrize("argv,words", [
    (["--text", "a", "--input", "{d}/texts.txt"], "give --text (one or more) or --input FILE, not both"),
    ([], "give --text (one or more) or --input FILE"),
    (["--input", "{d}/missing.txt"], "argument --input: file"),
    (["--input", "{d}/latin1.txt"], "is not UTF-8"),
    (["--input", "{d}/blank.txt"], "holds no text"),
    (["--text", ""], "argument --text: must not be empty"),
    (["--text", "a", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--text", "a", "--max-length", "1"], "max_length 1 leaves no room for [CLS] and [SEP]"),
])
def test_bad_input_is_one_line_and_exit_code_2(bert, capsys, tmp_path, argv, words):
    directory, _, _ = bert
    (tmp_path / "texts.txt").write_text("x\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    code, stdout, err = run(capsys, "embed", "--model", directory, *[a.format(d=tmp_path) for a in argv])
    assert code == 2 and stdout == ""
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_decoder_checkpoint_is_not_an_embedding_model(tmp_path, capsys):
    from minillm.models import DecoderLM, ModelConfig
    from minillm.tokenizers import CharTokenizer
    tokenizer = CharTokenizer(sorted(set(TEXT)))
    model = DecoderLM(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    ckpt.save_checkpoint(tmp_path, model, tokenizer, state={"step": 0})
    code, _, err = run(capsys, "embed", "--model", str(tmp_path), "--text", "the cat")
    assert code == 2 and "is not an encoder-only (BERT-style) model" in err
