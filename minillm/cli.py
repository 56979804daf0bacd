"""The `minillm` command line.

    minillm demo      forward + backward of a tiny transformer block in each flavour, gradient-checked
    minillm info      how the native extension was built (OpenMP, SIMD, threads)
    minillm tokenizer train | encode | decode   (see minillm/tokenizers/cli.py)
"""
import argparse
import json
import sys


def cmd_demo(args):
    from .demo import main
    return main()


def cmd_info(args):
    from . import build_info
    print(json.dumps(build_info(), indent=2))
    return 0


def build_parser():
    from . import __version__
    parser = argparse.ArgumentParser(prog="minillm", description="A small, readable, fast transformer engine for the CPU.")
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="forward/backward of a tiny transformer block in each flavour, with its gradient check"
                   ).set_defaults(run=cmd_demo)
    sub.add_parser("info", help="how the native extension was built").set_defaults(run=cmd_info)
    from .tokenizers.cli import add_parser as add_tokenizer_parser
    add_tokenizer_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
