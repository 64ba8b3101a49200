"""A manifest or reports table that is not UTF-8 gives one clear line (file, line, byte, fix), never a
UnicodeDecodeError traceback, in every command that reads it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle

MANIFEST = pd.DataFrame({
    "image_id": ["a", "b"], "patient_id": ["p1", "p2"], "study_id": ["s1", "s2"], "laterality": ["L", "R"],
    "view": ["CC", "MLO"], "path": ["a.png", "b.png"], "split": ["train", "test"], "source": ["t", "t"],
    "report_id": ["r1", "r2"],
})
# "café" and "Brustdrüse" in cp1252, as Excel's plain "CSV" export writes them on Windows.
REPORTS_CP1252 = ("report_id,findings,impression,history,text\n"
                  "r1,no mass,benign,,no mass\n"
                  "r2,mass near the café-au-lait spot,Brustdrüse dense,,mass\n").encode("cp1252")


def _cohort(tmp_path: Path, *, reports: bytes, manifest_encoding: str = "utf-8") -> Path:
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "manifest.csv").write_bytes(MANIFEST.to_csv(index=False).encode(manifest_encoding))
    (folder / "reports.csv").write_bytes(reports)
    return folder


def _one_line(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, text
    return lines[0]


def test_manifest_validate_names_the_file_line_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cohort(tmp_path, reports=REPORTS_CP1252)
    assert main(["manifest", "validate", str(folder)]) == 1
    out, err = capsys.readouterr()
    line = _one_line(out, "not UTF-8")
    offset = REPORTS_CP1252.index(b"\xe9")  # the é of café, on line 3
    assert str(folder / "reports.csv") in line and f"line 3, byte offset {offset} (0xe9)" in line
    assert "re-save it as UTF-8" in line and "Traceback" not in out + err
    assert out.strip().splitlines()[-1].endswith("2 rows, 1 problem(s)")


@pytest.mark.parametrize("argv", [["text", "stats", "{dir}"], ["preprocess", "{dir}", "--out", "{out}"]],
                         ids=["text-stats", "preprocess"])
def test_commands_fail_with_one_line_on_non_utf8_reports(argv: list[str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cohort(tmp_path, reports=REPORTS_CP1252)
    assert main([a.format(dir=folder, out=tmp_path / "out") for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err
    line = _one_line(err, "error:")
    assert "reports.csv: reports table is not UTF-8 text (first invalid byte at line 3" in line


def test_non_utf8_manifest_is_named_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    table = MANIFEST.assign(source=["Mammographie", "Sénologie"])  # é -> 0xe9 in latin-1, on line 3
    (tmp_path / "m" / "manifest.csv").write_bytes(table.to_csv(index=False).encode("latin-1"))
    assert main(["text", "stats", str(tmp_path / "m")]) == 2
    line = _one_line(capsys.readouterr().err, "error:")
    assert "manifest.csv: manifest is not UTF-8 text (first invalid byte at line 3" in line


def test_utf8_with_byte_order_mark_still_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cohort(tmp_path, reports=b"\xef\xbb\xbf" + REPORTS_CP1252.decode("cp1252").encode("utf-8"),
                     manifest_encoding="utf-8-sig")
    assert main(["manifest", "validate", str(folder)]) == 0
    bundle = load_bundle(folder)
    assert list(bundle.images["image_id"]) == ["a", "b"]
    assert bundle.reports["impression"].iloc[1] == "Brustdrüse dense"
