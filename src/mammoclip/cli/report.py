"""``mammoclip report RUN_DIR...``: several evaluation runs side by side in one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report``."""
    p = subparsers.add_parser("report", help="compare evaluation run directories in one HTML page")
    p.add_argument("runs", nargs="+", help="run directories (with results.json)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.evaluate.report import compare_runs

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compare_runs(args.runs), encoding="utf-8")
    print(out)
    return 0
