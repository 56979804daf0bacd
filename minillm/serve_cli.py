"""`minillm serve`: an OpenAI-compatible HTTP server over the serving engine (minillm/serve/).

    minillm serve --model smollm2-135m-instruct [--host 127.0.0.1] [--port 8000] [--max-batch 16] [--kv-blocks 512]
    minillm serve --model small=SOURCE --model large=SOURCE --route cascade --threshold -1.2
    minillm serve --model small=A --model large=B --route router --router router.json

Needs the `serve` extra (fastapi, uvicorn, sse-starlette, prometheus-client). The models load after
the server starts listening (GET /health answers 503 until they are ready). docs/serving.md.
"""
import os

from .config import UsageError, positive_float, positive_int


def add_parser(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (continuous batching, paged KV cache)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]SOURCE",
                   help="a .gguf file, a Hugging Face or minillm directory, or a known name; repeat as "
                        "small=SOURCE --model large=SOURCE to route between two")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=16, help="requests decoding at once")
    p.add_argument("--kv-blocks", type=positive_int, default=512, help="KV-cache blocks per model")
    p.add_argument("--block-size", type=positive_int, default=16, help="positions per KV-cache block")
    p.add_argument("--max-step-tokens", type=positive_int, default=256,
                   help="tokens per batched step (decode tokens plus prefill chunks)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="waiting requests before HTTP 429")
    p.add_argument("--request-timeout", type=positive_float, default=600.0, help="seconds per request")
    p.add_argument("--max-tokens", type=positive_int, default=256, help="max_tokens when a request sets none")
    p.add_argument("--route", choices=["fixed", "cascade", "router"], default="fixed",
                   help="with small= and large= models: how requests for model 'auto' are routed")
    p.add_argument("--threshold", type=float, default=-1.0,
                   help="cascade: escalate to the large model under this mean token log-probability")
    p.add_argument("--router", help="route 'router': a router file written by benchmarks/routing.py")
    p.add_argument("--threads", type=positive_int, help="kernel threads (default: all cores)")
    p.set_defaults(run=cmd_serve)


def parse_models(specs):
    """{name: source} from --model values: NAME=SOURCE, or SOURCE alone (named after the source)."""
    models = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, source = os.path.basename(os.path.normpath(spec)) or spec, spec
        if not name or not source:
            raise UsageError(f"--model {spec!r}: expected SOURCE or NAME=SOURCE")
        if name in models:
            raise UsageError(f"--model: two models named {name!r}; name them with NAME=SOURCE")
        models[name] = source
    return models


def cmd_serve(args):
    models = parse_models(args.model)
    if args.route != "fixed" and not {"small", "large"} <= set(models):
        raise UsageError(f"--route {args.route} needs --model small=SOURCE and --model large=SOURCE")
    if args.route == "router" and not args.router:
        raise UsageError("--route router needs --router FILE (written by benchmarks/routing.py)")
    try:
        import uvicorn
        from .serve.app import create_app
    except ImportError as error:
        raise UsageError(f"minillm serve needs the serve extra ({error.name} is missing): "
                         "pip install 'minillm[serve]'") from None
    from .serve import EngineConfig
    from .serve.routing import LogisticRouter
    from .serve.served import ServedModel
    router = LogisticRouter.load(args.router) if args.route == "router" else None
    config = EngineConfig(num_blocks=args.kv_blocks, block_size=args.block_size, max_batch=args.max_batch,
                          max_step_tokens=args.max_step_tokens)

    def load():
        from .pretrained import load_pretrained
        if args.threads:
            from . import set_num_threads
            set_num_threads(args.threads)
        served = {}
        for name, source in models.items():
            model, tokenizer = load_pretrained(source)
            if tokenizer is None:
                raise ValueError(f"{source}: the model has no tokenizer, so it cannot serve text")
            served[name] = ServedModel(name, model, tokenizer, config)
        return served

    app = create_app(load, max_queue=args.max_queue, request_timeout=args.request_timeout,
                     default_max_tokens=args.max_tokens, route=args.route, router=router, threshold=args.threshold)
    print(f"minillm serve: http://{args.host}:{args.port}/v1 (models: {', '.join(models)}; loading)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
