"""The commands for pretrained models (registered by minillm/cli.py):

    minillm generate --model SOURCE --prompt TEXT    the raw prompt continued (no chat template)
    minillm chat --model SOURCE [--system TEXT]      a conversation on standard input, streamed
    minillm export --ckpt DIR --format gguf|hf ...   a minillm (or any loadable) model for other tools
    minillm info --model SOURCE                      architecture, sizes, tensor types, tokenizer, template

SOURCE: a .gguf file, a Hugging Face or minillm checkpoint directory, or a known short name
(smollm2-135m-instruct). Files minillm cannot load are one-line errors with exit code 2.
"""
import os
import sys
from collections import Counter

from .config import UsageError, nonnegative_float, positive_int, probability, seed_int, thread_count


def _load(source, dequantize=False, threads=None):
    from .pretrained import load_pretrained
    if threads:
        from . import set_num_threads
        set_num_threads(threads)
    return load_pretrained(source, dequantize=dequantize)


def _need_tokenizer(tokenizer, source):
    if tokenizer is None:
        raise UsageError(f"{source}: the model has no tokenizer, so it cannot read text")
    return tokenizer


def encode_prompt(tokenizer, text):
    """Prompt ids as the model's own tools make them: special-token text as special tokens, and a
    BOS first when the tokenizer asks for one."""
    if not hasattr(tokenizer, "special_tokens"):                 # minillm's character tokenizer
        return tokenizer.encode(text).tolist()
    ids = tokenizer.encode(text, allowed_special="all")
    bos = getattr(tokenizer, "bos_token_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def generate_pretrained(args):
    """`minillm generate --model SOURCE`: the continuation of the raw prompt, streamed."""
    from .chat import StreamDecoder
    from .generate import generate
    model, tokenizer = _load(args.model, threads=args.threads)
    tokenizer = _need_tokenizer(tokenizer, args.model)
    if getattr(model.config, "family", "decoder") != "decoder":
        from .encoder_cli import generate_family
        return generate_family(args, model, tokenizer)
    ids = encode_prompt(tokenizer, args.prompt)
    if not ids:
        raise UsageError("--prompt is empty")
    context = model.config.block_size
    if len(ids) > context:
        raise UsageError(f"the prompt is {len(ids)} tokens, longer than the model's context of {context}")
    eos = getattr(tokenizer, "eos_token_id", None)
    stop = [eos] if eos is not None else []
    if args.stop:
        stop += tokenizer.encode(args.stop, allowed_special="all")[:1]
    stream = not args.no_stream and args.num_samples == 1
    decoder = StreamDecoder(tokenizer) if hasattr(tokenizer, "decode_bytes") else None

    def on_token(row, token):
        sys.stdout.write(decoder.push(token) if decoder else tokenizer.decode([token]))
        sys.stdout.flush()

    if stream:
        sys.stdout.write(args.prompt)
    outputs = generate(model, [ids] * args.num_samples, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stop,
                       use_cache=not args.no_cache, on_token=on_token if stream else None)
    if stream:
        sys.stdout.write((decoder.flush() if decoder else "") + "\n")
    else:
        for i, out in enumerate(outputs):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            text = tokenizer.decode(out, errors="replace") if decoder else tokenizer.decode(out)
            print(args.prompt + text)
    return 0


def cmd_best_of(args):
    """`minillm generate --best-of N --reward-model DIR`: print the highest-scoring of N samples."""
    from .alignment.best_of_n import best_of_n
    from .alignment.reward_model import load_reward_model
    from .pretrained import load_pretrained
    if args.sinks or args.num_beams != 1 or args.num_samples != 1:
        raise UsageError("--best-of samples N replies and prints one: it does not go with --sinks, --num-beams "
                         "or --num-samples")
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    reward_model, rm_tokenizer = load_reward_model(args.reward_model)
    model, tokenizer = load_pretrained(args.ckpt or args.model)
    if getattr(model.config, "family", "decoder") != "decoder":
        raise UsageError("--best-of samples from a decoder model")
    if tokenizer is None or rm_tokenizer.fingerprint() != tokenizer.fingerprint():
        raise UsageError(f"--reward-model {args.reward_model}: its tokenizer is not the model's, so it cannot "
                         "score the model's replies")
    ids = encode_prompt(tokenizer, args.prompt)
    if not ids:
        raise UsageError("--prompt is empty")
    if len(ids) >= min(model.config.block_size, reward_model.config.block_size):
        raise UsageError(f"the prompt is {len(ids)} tokens, too long for the contexts of the model and the reward model")
    stops = [t for t in [getattr(tokenizer, "eos_token_id", None)] if t is not None]
    if args.stop:
        stops = [int(t) for t in tokenizer.encode_ordinary(args.stop)[:1]] + stops
    best, ranked = best_of_n(model, reward_model, ids, args.best_of, args.max_new_tokens, stops, seed=args.seed,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    print(args.prompt + tokenizer.decode(best))
    print(f"(best of {args.best_of}: reward {ranked[0][0]:.4f}; the others {', '.join(f'{r:.4f}' for r, _ in ranked[1:])})",
          file=sys.stderr)
    return 0


def cmd_chat(args):
    from .chat import ChatSession
    model, tokenizer = _load(args.model, threads=args.threads)
    session = ChatSession(model, _need_tokenizer(tokenizer, args.model), system=args.system,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          max_new_tokens=args.max_new_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        print("(chat: /reset starts over, Ctrl-D ends)", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                                        # end of input
            if interactive:
                print(file=sys.stderr)
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        try:
            for piece in session.reply(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:                           # stop this reply, keep the conversation
            print("\n(interrupted)", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_export(args):
    if bool(args.ckpt) == bool(args.model):
        raise UsageError("export: give exactly one of --ckpt DIR (a minillm checkpoint) and --model SOURCE")
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"export: {args.out!r} exists; pass --overwrite to replace it")
    if args.format == "hf" and args.scheme not in (None, "f32"):
        raise UsageError("export: --format hf writes float32 weights; --scheme is for --format gguf")
    if args.ckpt:
        from .checkpoint import build_model, load_checkpoint
        model, tokenizer = build_model(load_checkpoint(args.ckpt))
    else:
        model, tokenizer = _load(args.model)
    if args.format == "gguf":
        from .io.gguf_write import export_gguf
        export_gguf(model, tokenizer, args.out, args.scheme or "f32")
        print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB, {args.scheme or 'f32'})")
    else:
        from .io.hf import export_hf
        export_hf(model, tokenizer, args.out)
        print(f"wrote {args.out}/ (config.json, model.safetensors" + (", tokenizer.json)" if os.path.exists(
            os.path.join(args.out, "tokenizer.json")) else ")"))
    return 0


def count_weights(model):
    """Every weight, float or quantized (a tied table once)."""
    from .nn.quantized import QuantizedWeights
    quantized = sum(m.out_features * m.in_features for _, m in model.named_modules() if isinstance(m, QuantizedWeights))
    return model.num_parameters() + quantized


def model_info(source):
    """The lines `minillm info --model` prints."""
    from .io.build import weight_types
    from .tokenizers.merges import describe
    model, tokenizer = _load(source)
    c, where = model.config, getattr(model, "source", {})
    family = "llama" if c.positions == "rope" else "gpt2" if c.positions == "learned" else c.positions
    lines = [f"source: {where.get('path', source)} ({where.get('format', '?')})",
             f"architecture: {family}: {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads / "
             f"{c.n_kv_head or c.n_head} kv heads, head dim {c.n_embd // c.n_head}, feed-forward {c.hidden_size} "
             f"({c.activation}), {c.norm} eps {c.norm_eps:g}, positions {c.positions}"
             + (f" (RoPE base {c.rope_theta:g})" if c.positions == "rope" else "")
             + f", context {c.block_size}, vocab {c.vocab_size}, {'tied' if c.tie_embeddings else 'separate'} head",
             f"parameters: {count_weights(model) / 1e6:.1f}M"
             + (f" (quantized: {model.quantization})" if getattr(model, "quantization", None) else "")]
    file_types = Counter(where.get("types", {}).values())
    if file_types:
        lines.append("file tensor types: " + ", ".join(f"{k} x{n}" for k, n in sorted(file_types.items())))
    kept = Counter(weight_types(model).values())
    lines.append("in memory: " + ", ".join(f"{k} x{n}" for k, n in sorted(kept.items())))
    if tokenizer is None:
        lines.append("tokenizer: none")
    else:
        lines.append("tokenizer: " + (describe(tokenizer) if hasattr(tokenizer, "special_tokens") else
                                      f"{type(tokenizer).__name__}, vocab {tokenizer.vocab_size}"))
        for key in ("bos", "eos"):
            i = getattr(tokenizer, f"{key}_token_id", None)
            if i is not None:
                lines.append(f"  {key}: {i} {tokenizer.decode_bytes([i]).decode('utf-8', 'replace')!r}")
    template = getattr(tokenizer, "chat_template", None)
    lines.append("chat template:" + (f"\n{template}" if template else " none"))
    return lines


def add_parsers(sub):
    p = sub.add_parser("chat", help="talk to a pretrained model (its chat template, streamed, multi-turn)")
    p.add_argument("--model", required=True, help="a .gguf file, an HF or minillm directory, or a known name "
                   "(smollm2-135m-instruct)")
    p.add_argument("--system", help="the system message (default: the template's own)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.7, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=probability, default=0.9)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--max-new-tokens", type=positive_int, default=512, help="per reply")
    p.add_argument("--threads", type=thread_count)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("export", help="write a model as GGUF (llama.cpp) or a Hugging Face directory")
    p.add_argument("--ckpt", help="a minillm checkpoint directory")
    p.add_argument("--model", help="or any source load_pretrained reads (convert GGUF <-> HF)")
    p.add_argument("--format", required=True, choices=["gguf", "hf"])
    p.add_argument("--scheme", choices=["f32", "f16", "q8_0", "q4_0", "q4_1"],
                   help="GGUF weight type for the matrices (default f32); vectors stay f32")
    p.add_argument("--out", required=True, help="the .gguf file, or the directory for --format hf")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_export)
