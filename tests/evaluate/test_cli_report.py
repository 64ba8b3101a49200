"""CLI commands that need no model: `report`, and clear errors for bad options."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammoclip.cli.main import main
from mammoclip.evaluate.report import write_html_report, write_results


def test_report_command_compares_runs(tmp_path: Path) -> None:
    for name, auc in (("zs", 0.61), ("lp", 0.83)):
        res = {"kind": "zeroshot", "task": "mass", "summary": {"image_auc": auc}}
        write_results(tmp_path / name, res)
        write_html_report(tmp_path / name, res)
    out = tmp_path / "cmp" / "report.html"
    assert main(["report", str(tmp_path / "zs"), str(tmp_path / "lp"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "0.610" in page and "0.830" in page


@pytest.mark.parametrize("argv, message", [
    (["zeroshot", "--checkpoint", "x", "--manifest", "m", "--task", "spiculation", "--out", "o"], "unknown task"),
    (["report", "nowhere", "--out", "r.html"], "not a run directory"),
    (["probe", "--checkpoint", "x", "--manifest", "m", "--task", "mass", "--fractions", "a,b", "--out", "o"], "--fractions"),
])
def test_bad_options_give_one_line_errors(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for folder in ("x", "m"):  # paths that exist, so the command gets past its path checks to the option under test
        (tmp_path / folder).mkdir()
    (tmp_path / "m" / "manifest.csv").write_text("")
    try:
        code = main(argv)
    except SystemExit as exit_:  # option types (cli/_options.py) fail while argparse parses
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
