"""Entry point of ``mammoclip``: discovers command modules and dispatches.

Every command module in :mod:`mammoclip.cli` exposes ``register(subparsers)``; it adds one or more
sub-commands whose parser carries ``func=handler``. A handler takes the parsed namespace and
returns an exit code. ``main(argv)`` is callable from tests.

Every parser is a :class:`CliParser`, so each command behaves the same way without repeating it:
its ``--help`` starts with a one-line description and shows each option's default, help texts
written as reStructuredText (docstrings) are shown as plain text, and a misspelt command or choice
gets a "did you mean" suggestion. Building the parser imports no heavy module (torch, pandas): a
command imports those in its handler, after checking its paths, so ``--help`` and argument errors
come back at once.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import re
import sys
from collections.abc import Sequence
from typing import Any

import mammoclip
from mammoclip.errors import MammoclipError

#: reStructuredText roles and literals -> plain text: ``x`` -> x, :class:`~a.b.C` -> C, :func:`f` -> f.
_RST = [(re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<>]+?)`"), r"\1"), (re.compile(r"``([^`]+)``"), r"\1"),
        (re.compile(r"\*\*([^*]+)\*\*"), r"\1")]


def plain_text(text: str) -> str:
    """``text`` with reStructuredText markup removed, for help shown in a terminal."""
    for pattern, repl in _RST:
        text = pattern.sub(repl, text)
    return text


class HelpFormatter(argparse.HelpFormatter):
    """Plain-text help that shows each option's default.

    Like :class:`argparse.ArgumentDefaultsHelpFormatter`, but silent where a default says nothing
    (``None``, ``False``, suppressed) and where the help already states it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = plain_text(action.help or "")
        default = action.default
        if (not text or "default" in text.lower() or default in (None, False, argparse.SUPPRESS)
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))  # noqa: SLF001
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v) for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))


class _SubParsers(argparse._SubParsersAction):  # noqa: SLF001 - argparse has no public hook for this
    """Gives every sub-command a description (its one-line help) when the module sets none."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = str(kwargs["help"])[:1].upper() + str(kwargs["help"])[1:] + "."
        return super().add_parser(name, **kwargs)


class CliParser(argparse.ArgumentParser):
    """The parser of every command: :class:`HelpFormatter`, descriptions, "did you mean"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = plain_text(str(kwargs["description"]))
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and value not in choices:
            names = [str(c) for c in choices]
            close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
            what = "command" if isinstance(action, argparse._SubParsersAction) else "choice"  # noqa: SLF001
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise argparse.ArgumentError(
                action, f"invalid {what}: {value!r}{hint} (choose from {', '.join(names)})")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered command."""
    parser = CliParser(
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
