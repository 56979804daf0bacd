"""Tokenizers: characters, byte-level BPE (GPT-2 compatible), Unigram (SentencePiece-style),
WordPiece (BERT), and SentencePiece's own .model files (read and written, ids as sentencepiece's).
All share one interface (base.Tokenizer): train (not for .model files), encode, decode, save, load.

    from minillm.tokenizers import BPETokenizer, load
    tok = BPETokenizer.train(open("input.txt").read(), vocab_size=4096)
    ids = tok.encode("Hello world"); tok.decode(ids)
    tok.save("tok/"); tok = load("tok/")
    gpt2 = BPETokenizer.from_tiktoken("gpt2.tiktoken", {"<|endoftext|>": 50256})
"""
import os

from .base import Tokenizer, read_meta
from .bpe import PATTERNS, BPETokenizer, read_tiktoken
from .char import CharTokenizer
from .merges import MergesBPETokenizer
from .sentencepiece import SentencePieceTokenizer
from .unigram import UnigramTokenizer
from .wordpiece import WordPieceTokenizer

# every tokenizer by its kind: what `--tokenizer KIND` trains and what load() reads from a saved directory
KINDS = {"char": CharTokenizer, "bpe": BPETokenizer, "unigram": UnigramTokenizer, "wordpiece": WordPieceTokenizer}
LOADABLE = {**KINDS, "bpe_merges": MergesBPETokenizer,    # merge-list BPE and .model files come from
            "sentencepiece": SentencePieceTokenizer}      # pretrained files only


def load(path):
    """A tokenizer from a directory written by save(), a tiktoken rank file (*.tiktoken, read as
    byte-level BPE with GPT-2's pattern; a file of 50256 ranks is taken to be GPT-2's and gets
    <|endoftext|> = 50256), a BERT vocab.txt (read as WordPiece) or a SentencePiece .model file. A
    file that cannot be read or holds something malformed raises ValueError naming it
    (FileNotFoundError when it is missing)."""
    try:
        return _load(os.fspath(path))
    except (FileNotFoundError, ValueError):
        raise
    except (OSError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"
        raise ValueError(f"load: cannot read the tokenizer {os.fspath(path)!r}: {reason}") from None


def _load(path):
    if os.path.isdir(path):
        kind = read_meta(path).get("kind")
        if kind not in LOADABLE:
            raise ValueError(f"load: {path} holds an unknown tokenizer kind {kind!r}; known: {sorted(LOADABLE)}")
        return LOADABLE[kind].load(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: {path} does not exist")
    if path.endswith(".tiktoken"):
        ranks = read_tiktoken(path)
        gpt2 = len(ranks) == 50256 and max(ranks.values()) == 50255
        return BPETokenizer(ranks, {"<|endoftext|>": 50256} if gpt2 else None)
    if os.path.basename(path) == "vocab.txt":
        return WordPieceTokenizer.from_vocab_txt(path)
    if path.endswith(".model"):
        return SentencePieceTokenizer.from_file(path)
    raise ValueError(f"load: {path} is neither a saved tokenizer directory, a .tiktoken file, a vocab.txt nor a "
                     "SentencePiece .model file")


__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "MergesBPETokenizer", "UnigramTokenizer",
           "WordPieceTokenizer", "SentencePieceTokenizer", "PATTERNS", "KINDS", "LOADABLE", "load"]
