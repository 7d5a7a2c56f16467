"""The ``self1e`` command: one sub-command per module in this package.

Each sub-command module defines ``add_parser(subparsers)`` and ``run(args) -> int``; a module
imports nothing heavy (torch, transformers) at its top, so ``--help`` and argument errors are instant.
User errors (``ValueError``/``OSError`` raised by the library) are printed as one line, without a
traceback, and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("segment", "chat", "eval", "batch", "data", "train", "demo", "serve", "import_authors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="self1e", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"self1e.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and argument errors end here, before torch is imported
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for a 10 MB model are noise
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, KeyError) as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"self1e {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
