"""``mammoclip report RUN_DIR...``: several evaluation runs side by side in one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammoclip.cli._options import add_out_arg, resolve_out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report``."""
    p = subparsers.add_parser("report", help="compare evaluation run directories in one HTML page")
    p.add_argument("runs", nargs="+", help="run directories (with results.json)")
    add_out_arg(p, what="HTML file to write", file="report.html")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.errors import ConfigError
    from mammoclip.evaluate.report import compare_runs

    missing = [run for run in args.runs if not Path(run).is_dir()]
    if missing:  # before compare_runs imports matplotlib and pandas (seconds)
        raise ConfigError(f"{missing[0]}: not a run directory (no such folder)")
    out = Path(resolve_out(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compare_runs(args.runs), encoding="utf-8")
    print(out)
    return 0
