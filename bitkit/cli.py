"""The ``bitkit`` command line.

Each module that offers a command defines ``add_cli(subparsers)``, which registers its parser and
sets ``func`` to the function that runs it. This file only lists those modules, so a newcomer
finds a command's code next to the logic it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules with an ``add_cli(subparsers)`` function, in the order ``bitkit --help`` lists them.
COMMAND_MODULES = [
    "bitkit.demo",
    "bitkit.weights",
    "bitkit.hyperrule",
    "bitkit.runfile",
    "bitkit.data.cards",
    "bitkit.runs",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitkit", description="Big Transfer (BiT) workbench: models, training, analysis."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user mistakes: message, no traceback
        # str(KeyError("msg")) is "'msg'" (its repr): print the message itself.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"bitkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
