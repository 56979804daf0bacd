"""`minillm tokenizer train | encode | decode`.

    minillm tokenizer train --kind bpe --vocab-size 4096 --input a.txt b.txt --out tok/
    minillm tokenizer encode --tokenizer tok/ --text "Hello world"        # ids, space-separated
    echo "Hello world" | minillm tokenizer encode --tokenizer tok/ --format tokens
    minillm tokenizer decode --tokenizer tok/ --ids "15496 995"           # or ids on stdin

--tokenizer takes a directory written by train/save, a .tiktoken rank file or a BERT vocab.txt.
"""
import json
import sys

from ..config import existing_file, nonempty_string, output_directory, positive_int


def add_parser(sub):
    """Register the `tokenizer` command on the subparsers of the top-level parser."""
    parser = sub.add_parser("tokenizer", help="train a tokenizer, encode text, decode ids")
    tsub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION")

    train = tsub.add_parser("train", help="train a tokenizer on text files and save it to a directory")
    train.add_argument("--kind", choices=["bpe", "unigram", "wordpiece"], default="bpe")
    train.add_argument("--vocab-size", type=positive_int, required=True, help="tokens in the vocabulary, special tokens included")
    train.add_argument("--input", nargs="+", required=True, type=existing_file, metavar="FILE",
                       help="UTF-8 text files to train on")
    train.add_argument("--out", required=True, type=output_directory, metavar="DIR",
                       help="directory to write the tokenizer to")
    train.add_argument("--pattern", default="gpt2", help="bpe: pre-tokenizer, gpt2, cl100k or a regex (default gpt2)")
    train.add_argument("--special", nargs="*", type=nonempty_string, metavar="TOKEN",
                       help="special tokens (default: <|endoftext|> for bpe, <unk> <s> </s> for unigram, "
                            "[PAD] [UNK] [CLS] [SEP] [MASK] for wordpiece)")
    train.add_argument("--cased", action="store_true", help="wordpiece: keep case and accents")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    encode = tsub.add_parser("encode", help="print the token ids of text (from --text, --input or stdin)")
    encode.add_argument("--tokenizer", required=True, metavar="PATH")
    encode.add_argument("--text", help="the text (default: read stdin)")
    encode.add_argument("--input", type=existing_file, metavar="FILE", help="read the text from a file")
    encode.add_argument("--allow-special", action="store_true", help="encode special tokens in the text as such")
    encode.add_argument("--format", choices=["ids", "json", "tokens"], default="ids")
    encode.set_defaults(run=cmd_encode)

    decode = tsub.add_parser("decode", help="print the text of token ids (from --ids or stdin)")
    decode.add_argument("--tokenizer", required=True, metavar="PATH")
    decode.add_argument("--ids", help="ids separated by spaces or commas, or a JSON list (default: read stdin)")
    decode.add_argument("--errors", default="strict", choices=["strict", "replace"],
                        help="what to do with bytes that are not UTF-8 (default: stop with an error)")
    decode.set_defaults(run=cmd_decode)

    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])
    return parser


def _fail(message):
    """Bad input: one line naming the problem, exit code 2 (as every minillm command)."""
    print(f"minillm tokenizer: error: {message}", file=sys.stderr)
    return 2


def cmd_train(args):
    from tqdm import tqdm

    from . import KINDS, PATTERNS
    from .bpe import check_pattern
    if args.kind == "bpe":
        try:
            check_pattern(PATTERNS.get(args.pattern, args.pattern))
        except ValueError as e:
            return _fail(f"--pattern: {e}")
    texts = []
    for path in args.input:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError) as e:
            return _fail(f"cannot read {path}: {e}")
    options = {}
    if args.special is not None:
        options["special_tokens"] = args.special
    if args.kind == "bpe":
        options["pattern"] = args.pattern
    if args.kind == "wordpiece" and args.cased:
        options["lowercase"] = False
    bar = tqdm(total=None, desc=f"training {args.kind}", unit="step", disable=args.no_progress, file=sys.stderr)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        tok = KINDS[args.kind].train(texts, args.vocab_size, progress=progress, **options)
    except ValueError as e:
        bar.close()
        return _fail(str(e))
    bar.close()
    try:
        tok.save(args.out)
    except OSError as e:
        return _fail(f"cannot write the tokenizer to {args.out}: {e.strerror or e}")
    print(f"{args.kind} tokenizer with {tok.vocab_size} tokens written to {args.out}")
    return 0


def _load(path):
    from . import load
    return load(path)


def cmd_encode(args):
    try:
        tok = _load(args.tokenizer)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    if args.text is not None:
        text = args.text
    elif args.input:
        try:
            with open(args.input, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return _fail(f"cannot read {args.input}: {e}")
    else:
        text = sys.stdin.read()
    try:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
    except ValueError as e:
        return _fail(str(e))
    if args.format == "json":
        print(json.dumps(ids))
    elif args.format == "tokens":
        print(json.dumps([_show(tok.id_to_token(i)) for i in ids], ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def _show(token):
    return token.decode("utf-8", errors="backslashreplace") if isinstance(token, bytes) else token


def cmd_decode(args):
    try:
        tok = _load(args.tokenizer)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    raw = (args.ids if args.ids is not None else sys.stdin.read()).strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(x) for x in raw.replace(",", " ").split()]
        text = tok.decode(ids, errors=args.errors)
    except (ValueError, TypeError) as e:
        return _fail(str(e))
    sys.stdout.write(text + "\n")
    return 0
