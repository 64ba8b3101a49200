"""The demo end to end (quick configuration), its report in a real browser, and its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammoclip.cli.main import main
from mammoclip.demo import DemoConfig, estimate_seconds
from mammoclip.errors import ConfigError
from tests.browser import check_page

#: The page shows 3 decimals: a displayed number is within half a unit of the last digit.
SHOWN = 5e-4 + 1e-9


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    return out


@pytest.mark.slow
def test_demo_writes_every_artefact(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert results["cohort"]["images"] == 4 * DemoConfig.quick(demo_dir).patients
    assert results["cohort"]["failures"] == 0
    assert results["pretrain"]["steps"] > 0 and results["pretrain"]["val_loss_best"] is not None
    assert set(results["stage_seconds"]) >= {"synth", "preprocess", "pretrain", "zeroshot", "probe"}
    for fig in results["figures"].values():
        assert (demo_dir / fig["path"]).stat().st_size > 1000
    kinds = {(r["evaluation"], r["task"], r["init"]) for r in results["table"]}
    for task in ("mass", "calcification"):
        assert ("zero-shot", task, "pretrained") in kinds
        for init in ("pretrained", "imagenet", "random"):
            assert ("linear probe", task, init) in kinds
    for row in results["table"]:
        assert 0.0 <= row["value"] <= 1.0


@pytest.mark.slow
@pytest.mark.browser
def test_report_loads_in_a_browser_and_matches_results_json(demo_dir, tmp_path):
    page = check_page(demo_dir / "index.html", screenshot=tmp_path / "report.png")
    assert page.title == "mammoclip demo report"
    assert page.images_total >= 4 and page.images_broken == []
    assert page.links_broken == []
    assert (tmp_path / "report.png").stat().st_size > 10_000

    results = json.loads((demo_dir / "results.json").read_text())
    header, *rows = page.tables["results-table"]
    assert header == ["evaluation", "task", "init", "label fraction", "metric", "value", "95% CI"]
    assert len(rows) == len(results["table"])
    for cells, expected in zip(rows, results["table"]):
        assert cells[:3] == [expected["evaluation"], expected["task"], expected["init"]]
        assert float(cells[5]) == pytest.approx(expected["value"], abs=SHOWN)
        if expected["fraction"] is not None:
            assert float(cells[3]) == pytest.approx(expected["fraction"], abs=SHOWN)
        if expected["ci_low"] is not None:
            lo, hi = (float(v) for v in cells[6].split("–"))
            assert (lo, hi) == pytest.approx((expected["ci_low"], expected["ci_high"]), abs=SHOWN)
    cohort_rows = page.tables["cohort-table"][1:]
    assert {r[0]: int(r[1]) for r in cohort_rows} == {k: v["images"] for k, v in results["cohort"]["splits"].items()}


def test_demo_config_is_validated_and_estimated():
    with pytest.raises(ConfigError):
        DemoConfig(patients=2)
    with pytest.raises(ConfigError):
        DemoConfig(fractions=(0.0, 1.0))
    full, quick = DemoConfig(), DemoConfig.quick("x")
    assert 60 < estimate_seconds(full) < 15 * 60
    assert estimate_seconds(quick) < estimate_seconds(full)
