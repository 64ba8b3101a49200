"""docs/cli.md is generated from the parsers; it must match them, and --help lists every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mammoclip.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_up_to_date():
    rc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"]).returncode
    assert rc == 0, "docs/cli.md is stale: run `python scripts/gen_cli_docs.py`"


def test_help_lists_every_command_with_one_line():
    text = build_parser().format_help()
    for name in ("synth", "preprocess", "manifest", "text", "models", "convert-official", "pretrain",
                 "zeroshot", "retrieval", "probe", "finetune", "report", "embed", "neighbors", "demo"):
        assert f"    {name}" in text, name
