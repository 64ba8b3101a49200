"""``make lint`` as tests: ruff on ``src tests bench`` and mypy on the typed core must pass.

Both run in a subprocess with the tools installed next to the interpreter running pytest (the venv's,
from the ``test`` extra), from the repository root, so they read ``pyproject.toml`` exactly as
``make lint`` does. Their caches stay in the repository (``.ruff_cache``, ``.mypy_cache``, both
git-ignored) and are shared with ``make lint``.

Timing (2-core shared machine, measured with the typed core as of this file): ruff takes under 0.1 s
on the whole tree, cache or not. mypy takes about 1.5 s with its cache, and 1-2 s after an edit to one
typed module; with an empty cache (first run after a fresh checkout) it takes 40-55 s, almost all
of it reading the torch, numpy and pandas stubs, hence the generous timeout.

These lint the whole tree, so a failure may come from a file someone else is still editing: the
assertion message lists the offending files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The console script ``name`` installed beside this interpreter (skip when it is not installed)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {Path(sys.executable).parent} (pip install -e '.[test]')")
    return str(path)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_passes() -> None:
    run = _run([_tool("ruff"), "check", "--output-format", "concise", "src", "tests", "bench"], timeout=120)
    assert run.returncode == 0, f"ruff check src tests bench failed:\n{run.stdout}{run.stderr}"


def test_mypy_passes_on_typed_core() -> None:
    run = _run([_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"),
                "--cache-dir", str(ROOT / ".mypy_cache")], timeout=300)
    assert run.returncode == 0, f"mypy (files from [tool.mypy] in pyproject.toml) failed:\n{run.stdout}{run.stderr}"
