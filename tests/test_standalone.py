"""The repository stands on its own: no tracked file points a reader at a document outside it.

What a reader of the code needs about the original Mammo-CLIP lives in ``docs/original.md`` and the
design rules in ``docs/architecture.md``; code and docs cite those. This test fails when any tracked
text file names one of the team's planning documents, which are not part of the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so that this file does not match itself.
_OUTSIDE = re.compile("|".join([
    r"official" + r"-spec",
    r"shared" + r"/docs",
    r"\.\./" + r"shared",
    r"\b(?:design|mission|style)" + r"\.md\b",
    r"\bmission" + r" §",
]))


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
        names = [n for n in out.stdout.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):  # an unpacked sdist: walk the tree instead
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts
                 and ".git" not in p.parts]
    files = []
    for name in names:
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def outside_references(text: str) -> list[str]:
    """The lines of ``text`` that name a document outside the repository."""
    return [line.strip() for line in text.splitlines() if _OUTSIDE.search(line)]


def test_pattern_catches_the_old_citations() -> None:
    assert outside_references("crop (official" + "-spec §1 step 5)\nplain line")
    assert outside_references("see ../" + "shared/" + "docs/x")
    assert outside_references("formats (mission" + ".md §4)")
    assert not outside_references("see docs/original.md §1 step 5 and docs/architecture.md")


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    files = _tracked_text_files()
    assert len(files) > 50, "expected the repository's files"
    hits = {str(p.relative_to(ROOT)): found for p in files
            if (found := outside_references(p.read_text(encoding="utf-8", errors="replace")))}
    assert not hits, "cite docs/original.md or docs/architecture.md instead:\n" + "\n".join(
        f"{name}: {lines[0][:120]}" for name, lines in sorted(hits.items()))


@pytest.mark.parametrize("doc", ["docs/original.md", "docs/architecture.md", "CONTRIBUTING.md"])
def test_cited_documents_exist(doc: str) -> None:
    assert (ROOT / doc).is_file()


def test_section_citations_resolve() -> None:
    """Every ``docs/original.md §N`` cited in the repository names a section that the page has."""
    page = (ROOT / "docs" / "original.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", page, flags=re.M))
    cited: dict[str, str] = {}
    for path in _tracked_text_files():
        for match in re.finditer(r"original\.md`?\s*§(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8",
                                                                                    errors="replace")):
            cited.setdefault(match.group(1), str(path.relative_to(ROOT)))
    assert cited, "expected citations of docs/original.md"
    missing = {sec: where for sec, where in cited.items() if sec not in sections}
    assert not missing, f"sections cited but absent from docs/original.md: {missing}"


def test_design_rule_citations_resolve() -> None:
    """Every ``design rule N`` cited in code or docs is one of the numbered rules in docs/architecture.md."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rules_section = page.split("## Design rules", 1)[1].split("\n## ", 1)[0]
    rules = set(re.findall(r"^(\d+)\. \*\*", rules_section, flags=re.M))
    assert rules == {str(n) for n in range(1, 11)}
    cited = {}
    for path in _tracked_text_files():
        for match in re.finditer(r"design rule (\d+)", path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(match.group(1), str(path.relative_to(ROOT)))
    assert cited, "expected citations of the design rules"
    assert set(cited) <= rules, {n: where for n, where in cited.items() if n not in rules}


def test_pre_commit_hooks_run_the_lint_target() -> None:
    """The git hooks and ``make lint`` run the same tools on the same trees, from .venv."""
    import yaml

    hooks = {h["id"]: h for repo in yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
             for h in repo["hooks"]}
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check src tests bench" in lint and "/bin/mypy" in lint
    assert hooks["ruff"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["ruff"]["files"] == "^(src|tests|bench)/"
    assert hooks["mypy"]["entry"] == ".venv/bin/mypy" and hooks["mypy"]["pass_filenames"] is False
