"""``mammoclip text stats`` on a plain folder of report files (no manifest), non-UTF-8 files included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mammoclip.cli.main import main
from mammoclip.errors import DataError
from mammoclip.text import stats as S

FIXTURES = Path(__file__).parent / "fixtures" / "reports"


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    """Two fixture reports, one in a subfolder, one cp1252 file and a file that is not a report."""
    folder = tmp_path / "reports"
    (folder / "2024").mkdir(parents=True)
    (folder / "us_acr.txt").write_bytes((FIXTURES / "us_acr.txt").read_bytes())
    (folder / "2024" / "per_breast.txt").write_bytes((FIXTURES / "per_breast.txt").read_bytes())
    (folder / "2024" / "win.txt").write_bytes(
        "BREAST COMPOSITION: ACR B\nFINDINGS: 12 mm \u00b1 1 mm \u201cspiculated\u201d mass, left breast.\n"
        "IMPRESSION: BI-RADS 5.".encode("cp1252"))
    (folder / "notes.md").write_text("BI-RADS 1", encoding="utf-8")
    return folder


def test_read_report_folder(report_dir: Path) -> None:
    rows, fallback = S.read_report_folder(report_dir)
    assert [r["report_id"] for r in rows] == ["2024/per_breast", "2024/win", "us_acr"]
    assert fallback == {"2024/win": "cp1252"}
    assert "\u00b1 1 mm \u201cspiculated\u201d" in rows[1]["text"]
    with pytest.raises(DataError, match="no report files matching"):
        S.read_report_folder(report_dir / "2024", pattern="*.rtf")
    with pytest.raises(DataError, match="not a folder"):
        S.read_report_folder(report_dir / "us_acr.txt")


def test_folder_summary(report_dir: Path) -> None:
    s = S.folder_summary(report_dir)
    assert (s["n_reports"], s["n_parsed"]) == (3, 3)
    assert s["birads"] == {"0": 0, "1": 0, "2": 0, "3": 0, "4": 2, "5": 1, "6": 0, "missing": 0}
    assert s["density"] == {"A": 0, "B": 1, "C": 2, "D": 0, "missing": 0}
    assert s["non_utf8"] == {"2024/win": "cp1252"}
    assert s["warnings"] == ["report 2024/win: not valid UTF-8; read as cp1252"]
    assert "label_agreement" not in s


def test_cli_stats_on_a_report_folder(report_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats.json"
    assert main(["text", "stats", str(report_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr()
    assert "reports: 3 (3 parsed)" in printed.out
    assert "not UTF-8, read with a fallback codec: 1 of 3 files: 2024/win (cp1252)" in printed.out
    assert "warning: report 2024/win: not valid UTF-8; read as cp1252" in printed.err
    assert json.loads(out.read_text())["birads"]["5"] == 1
    # --reports-dir says the same explicitly.
    assert main(["text", "stats", "--reports-dir", str(report_dir / "2024")]) == 0
    assert "reports: 2 (2 parsed)" in capsys.readouterr().out


def test_cli_stats_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text", "stats"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["text", "stats", str(tmp_path), "--reports-dir", str(tmp_path)]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["text", "stats", str(tmp_path)]) == 2  # a folder with neither manifest nor reports
    assert "no report files matching *.txt" in capsys.readouterr().err


def test_cli_stats_folder_with_manifest_reads_the_manifest(make_cohort: Callable[..., Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_cohort(n_patients=2, size=(64, 48), seed=2)
    out = tmp_path / "stats.json"
    assert main(["text", "stats", str(manifest.parent), "--output", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_reports"] == 2 and summary["label_agreement"]["birads"]["agreement"] == 1.0
    assert "non_utf8" not in summary
