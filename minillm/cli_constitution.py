"""`minillm constitution`: the Constitutional-AI loop (minillm/alignment/constitution.py) from the
command line: answer, critique, revise and judge every prompt, and write into --out

    sft.jsonl           {"messages": [..., user prompt, assistant: the revised answer]}  (minillm finetune --data;
                        {"prompt", "completion"} for a model without a chat template)
    preferences.jsonl   {"prompt", "chosen", "rejected", "principle", "p_chosen", "chosen_is", "judgements"}
    transcript.jsonl    every step's request and reply, the principle, both judgements
    templates.json      the templates the run used (the defaults, or --templates over them)
    run.json            the model, the files, the settings, the counts and the position bias

The principles, prompts and templates are read and checked first (a bad line is one error naming
file:line, exit 2) and --out is checked before the model is loaded: an existing directory that
holds files needs --overwrite. The run holds --out's lock (one writer at a time); the outputs are
written at the end, each file atomically.
"""
import json
import os
import sys
import time

from .config import (UsageError, existing_file, nonnegative_float, number, output_directory, positive_int,
                     probability, seed_int, thread_count)

margin = number(0.0, 0.5, high_open=True, name="margin")


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="answer", unit="step", file=sys.stderr, dynamic_ncols=True)


def _check_out(out, overwrite):
    from .files import LOCK_NAME
    if os.path.isdir(out) and not overwrite:
        held = sorted(f for f in os.listdir(out) if f != LOCK_NAME)
        if held:
            raise UsageError(f"--out {out!r} already holds files ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                             "pass --overwrite to replace the outputs, or choose another directory")


def _jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_outputs(out, items, templates, run, chat, min_margin=0.0):
    """The five files of --out (see the module docstring), each written atomically; the counts."""
    from .alignment.constitution import preference_record, sft_record
    from .files import atomic_write, write_json
    sft = [r for r in (sft_record(item, chat) for item in items) if r is not None]
    preferences = [r for r in (preference_record(item, chat, min_margin) for item in items) if r is not None]
    atomic_write(os.path.join(out, "sft.jsonl"), _jsonl(sft))
    atomic_write(os.path.join(out, "preferences.jsonl"), _jsonl(preferences))
    atomic_write(os.path.join(out, "transcript.jsonl"), _jsonl(items))
    write_json(os.path.join(out, "templates.json"), templates)
    counts = {"prompts": len(items), "sft": len(sft), "preferences": len(preferences),
              "revised_preferred": sum(r["chosen_is"] == "revised" for r in preferences)}
    write_json(os.path.join(out, "run.json"), {**run, "counts": counts})
    return counts


def cmd_constitution(args):
    from .alignment.constitution import LoopConfig, check_judgement_labels, position_bias, run_loop
    from .alignment.constitution_files import read_principles, read_prompts, read_templates
    from .files import DirectoryLock
    from .pretrained import load_pretrained
    principles = read_principles(args.principles)
    prompts = read_prompts(args.prompts)
    templates = read_templates(args.templates)
    _check_out(args.out, args.overwrite)
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    model, tokenizer = load_pretrained(args.model)
    if getattr(model.config, "family", "decoder") != "decoder":
        raise UsageError(f"--model {args.model!r} is not a decoder (a text generator); the loop needs one")
    check_judgement_labels(tokenizer, templates)                 # before hours of generation, not after
    config = LoopConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, batch_size=args.batch_size)
    print(f"constitution: {len(prompts)} prompts, {len(principles)} principles, model {args.model}", file=sys.stderr)
    with DirectoryLock(args.out):                                # one writer for the whole run
        _check_out(args.out, args.overwrite)
        bar = _progress(5 * len(prompts), not args.no_progress)  # 3 generations + 2 judgements per prompt
        started = time.perf_counter()
        try:
            items = run_loop(model, tokenizer, prompts, principles, templates, config, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - started
        chat = bool(getattr(tokenizer, "chat_template", None))
        run = {"model": args.model, "principles": principles, "prompts_file": args.prompts,
               "templates_file": args.templates, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
               "temperature": args.temperature, "top_p": args.top_p, "batch_size": args.batch_size,
               "min_margin": args.min_margin, "position_bias_mean_p_A": position_bias(items),
               "seconds": round(seconds, 1)}
        counts = write_outputs(args.out, items, templates, run, chat, args.min_margin)
    print(f"done in {seconds:.0f} s: {counts['sft']} SFT records, {counts['preferences']} preference pairs "
          f"({counts['revised_preferred']} preferring the revision); mean p(A) {run['position_bias_mean_p_A']:.2f}; "
          f"in {args.out}")
    return 0


def add_parser(sub):
    p = sub.add_parser("constitution", help="Constitutional AI: answer, critique, revise and judge prompts against "
                                            "principles; write SFT and preference data")
    p.add_argument("--model", required=True, help="a known name, an HF directory, a .gguf file or a minillm "
                                                  "checkpoint (a decoder)")
    p.add_argument("--principles", required=True, type=existing_file, help="text, one principle per line "
                                                                            "('#' comments)")
    p.add_argument("--prompts", required=True, type=existing_file, help="a .jsonl file of {\"prompt\"} or "
                                                                        "{\"messages\"} records, or text, one per line")
    p.add_argument("--out", required=True, type=output_directory, help="directory for sft.jsonl, "
                                                                       "preferences.jsonl, transcript.jsonl, ...")
    p.add_argument("--templates", type=existing_file, help="JSON {step: template} overriding the default answer / "
                                                           "critique / revision / judgement templates")
    p.add_argument("--seed", type=seed_int, default=0, help="draws the principles and seeds the sampling")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="per reply (default %(default)s)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.7, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-p", type=probability)
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts generated together "
                                                                      "(default %(default)s)")
    p.add_argument("--min-margin", type=margin, default=0.0, help="keep a preference pair only if p(chosen) >= "
                                                                   "0.5 + this (default %(default)s: every pair)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs in an --out that holds files")
    p.add_argument("--threads", type=thread_count)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_constitution)
