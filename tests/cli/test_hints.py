"""Every command line the code suggests (``mammoclip ...`` in backticks in an error, a note or a help
text) parses with the real parser, so a hint never teaches invalid syntax (the size-mismatch hint
once said ``--size 256 160``; the option takes ``256x160``).

Hints are collected from the source, not listed by hand: every string literal (f-strings included,
docstrings excluded: they describe usage with ``[...]`` synopses) is searched for backticked text
that starts with ``mammoclip ``. An f-string field becomes ``256`` (a number is a valid value for
every option that takes one here, and a valid path); ``a|b|c`` in the command position is expanded
into each command; arguments the hint leaves out because it is about one option (``--checkpoint``,
the input folder ...) are filled with ``PLACEHOLDER`` until the parser stops asking for them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from mammoclip.cli.main import build_parser

SRC = Path(__file__).resolve().parents[2] / "src" / "mammoclip"
HINT = re.compile(r"`(mammoclip [^`]+)`")
FIELD = "256"
FILL = "PLACEHOLDER"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else FIELD for v in node.values)
    return None


def collect_hints() -> list[tuple[str, str]]:
    """``(where, command line)`` of every backticked ``mammoclip ...`` in the package's string literals."""
    hints = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in skip or id(node) in inner:
                continue
            text = _text(node)
            for match in HINT.finditer(text or ""):
                hints.append((f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}", match.group(1)))
    return hints


def _command_depth(parser: argparse.ArgumentParser, tokens: list[str]) -> int:
    """How many leading tokens name (sub-)commands."""
    depth = 0
    while depth < len(tokens):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if not subs or tokens[depth] not in subs[0].choices:
            break
        parser = subs[0].choices[tokens[depth]]
        depth += 1
    return depth


def parse_hint(line: str) -> argparse.Namespace:
    """Parse ``line`` (without its leading ``mammoclip``), filling in the arguments it leaves out.

    Raises:
        AssertionError: with argparse's message when the hint itself is invalid.
    """
    tokens = shlex.split(line)[1:]
    for _ in range(10):
        parser = build_parser()
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return parser.parse_args(tokens)
        except SystemExit:
            message = err.getvalue().strip().splitlines()[-1]
        missing = re.search(r"the following arguments are required: (.+)$", message)
        one_of = re.search(r"one of the arguments (\S+) .* is required", message)
        if one_of:
            tokens += [one_of.group(1), FILL]
        elif missing:
            depth = _command_depth(parser, tokens)
            for name in (n.strip() for n in missing.group(1).split(",")):
                if name.startswith("-"):
                    tokens += [name.split("/")[0], FILL]
                else:
                    tokens.insert(depth, FILL)
        else:
            raise AssertionError(f"`{line}` does not parse: {message}")
    raise AssertionError(f"`{line}`: still missing arguments after 10 tries")


def _expanded(line: str) -> list[str]:
    head, _, rest = line.partition(" ")[2].partition(" ")
    return [f"mammoclip {name} {rest}".strip() for name in head.split("|")]


HINTS = [(where, one) for where, line in collect_hints() for one in _expanded(line)]


def test_hints_are_found() -> None:
    lines = {line for _, line in HINTS}
    print("\n".join(f"{where}: {line}" for where, line in HINTS))
    assert len(HINTS) >= 8, HINTS
    assert "mammoclip preprocess SOURCE --out DIR --size 256x256" in lines
    assert "mammoclip models list" in lines


@pytest.mark.parametrize(("where", "line"), HINTS, ids=[f"{w}:{line}" for w, line in HINTS])
def test_every_hint_parses(where: str, line: str) -> None:
    parse_hint(line)


def test_invalid_hint_is_caught() -> None:
    """The checker itself: the old size hint and a misspelt option fail, a fixed hint passes."""
    for bad in ("mammoclip preprocess --size 256 160", "mammoclip zeroshot --taks mass", "mammoclip zeroshto"):
        with pytest.raises(AssertionError, match="does not parse"):
            parse_hint(bad)
    assert parse_hint("mammoclip preprocess SOURCE --out DIR --size 256x160").size == (256, 160)


def test_size_mismatch_hint_parses_to_the_models_size(make_cohort) -> None:  # noqa: ANN001
    """The hint of the real size-mismatch error, with the real numbers, parses to the model's size."""
    from mammoclip.data.manifest import load_bundle
    from mammoclip.errors import DataError
    from mammoclip.evaluate.features import check_image_size

    class Model:
        class preprocess_cfg:  # noqa: N801 - mimics the model attribute
            image_size = (512, 304)

    bundle = load_bundle(make_cohort(n_patients=1))
    with pytest.raises(DataError) as err:
        check_image_size(Model(), bundle)
    (line,) = HINT.findall(str(err.value))
    assert parse_hint(line).size == (512, 304)


def test_manifest_name_matches_the_data_layer() -> None:
    """cli._options repeats the manifest file name to avoid importing pandas; it must not drift."""
    from mammoclip.cli._options import MANIFEST_NAME
    from mammoclip.data.manifest import MANIFEST_FILE

    assert MANIFEST_NAME == MANIFEST_FILE
