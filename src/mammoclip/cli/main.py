"""Entry point of ``mammoclip``: discovers command modules and dispatches.

Every command module in :mod:`mammoclip.cli` exposes ``register(subparsers)``; it adds one or more
sub-commands whose parser carries ``func=handler``. A handler takes the parsed namespace and
returns an exit code. ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import mammoclip
from mammoclip.errors import MammoclipError


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered command."""
    parser = argparse.ArgumentParser(
        prog="mammoclip",
        description="Mammo-CLIP toolkit: synthetic cohort, DICOM preprocessing, pre-training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"mammoclip {mammoclip.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    package = importlib.import_module("mammoclip.cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"mammoclip.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    # argparse lists sub-commands in insertion order; sort them for a stable --help.
    sub._choices_actions.sort(key=lambda a: a.dest)  # noqa: SLF001
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args) or 0)
    except MammoclipError as err:
        print(f"mammoclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
