"""HTML sections of detection and FActOR runs, built on real (tiny, untrained) run directories."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mammoclip.errors import DataError
from mammoclip.evaluate.sections import attribution_section_html, detection_section_html, verdict_sentence

SIZE = (256, 160)  # the shared synthetic cohort's
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _pngs(page: str) -> list[tuple[int, int]]:
    """Sizes of every embedded image; each must decode as a PNG."""
    sizes = []
    for data in DATA_URI.findall(page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "PNG"
            sizes.append(img.size)
    return sizes


def _ci(e: dict[str, Any]) -> str:
    """How the page writes one estimate (``value [low, high]``)."""
    f = [("–" if e[k] is None or not np.isfinite(e[k]) else f"{e[k]:.3f}") for k in ("value", "ci_low", "ci_high")]
    return f"{f[0]} <span class=meta>[{f[1]}, {f[2]}]</span>"


@pytest.fixture(scope="module")
def factor_run(synthetic_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``evaluate_localization`` of an untrained mapper on mammoclip-tiny, two baselines, 2 overlay rows."""
    from mammoclip.attribution import AttributeSpec, FactorMapper
    from mammoclip.attribution.evaluation import evaluate_localization
    from mammoclip.attribution.mapper import tap_feature_map
    from mammoclip.data.manifest import load_bundle
    from mammoclip.models import create_model

    torch.manual_seed(0)
    model = create_model("mammoclip-tiny", pretrained=False, image_size=SIZE).eval()
    with torch.no_grad():
        shape = tuple(tap_feature_map(model, torch.zeros(1, 1, *SIZE), -2).shape[1:])  # (C, h, w)
    specs = [AttributeSpec("mass", "mass", ("mass",)), AttributeSpec("calcification", "calcification", ("calc",))]
    mapper = FactorMapper(specs, torch.randn(2, model.embed_dim), shape, SIZE, tap=-2)
    out = tmp_path_factory.mktemp("factor-eval")
    evaluate_localization(model, mapper, load_bundle(synthetic_cohort), split="all",
                          baselines=("top_channels", "breast_prior"), n_boot=20, out_dir=out, overlays=2)
    return out


def test_attribution_section_shows_the_run(factor_run: Path) -> None:
    res = json.loads((factor_run / "results.json").read_text())
    page = (factor_run / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "<section class=attribution>" in page
    section = attribution_section_html(factor_run)
    assert section in page  # the run's page is the section the demo embeds
    shown = 0
    for r in res["metrics"]:
        if r["metric"] in ("pointing", "hit@0.25", "hit@0.5", "energy"):
            assert _ci(r) in section, r
            shown += 1
    assert shown == 4 * 3 * len(res["beats_breast_prior"])  # metric x method x scored attribute
    for attribute, verdict in res["beats_breast_prior"].items():
        sentence = verdict_sentence(attribute, verdict)
        assert f"<b>{html.escape(sentence)}</b>" in section
        beats = all(verdict.values())
        assert ("FActOR beats the breast prior" in sentence) is beats
        assert ("does NOT beat the breast prior: not localizing" in sentence) is (not beats)

    grids = res["overlays"]
    assert [g["attribute"] for g in grids] == sorted(res["beats_breast_prior"], key=["mass", "calcification"].index)
    for g in grids:
        assert g["methods"] == ["factor", "top_channels", "breast_prior"] and len(g["rows"]) == 2
        assert len({r["patient_id"] for r in g["rows"]}) == 2  # spread over patients first
        tile = Image.open(factor_run / g["rows"][0]["tiles"]["factor"])
        assert tile.size == (160, 256)  # drawn at the grid's tile height (the image's own here)
        with Image.open(factor_run / g["file"]) as grid:  # 2 rows x 3 methods with 4-pixel gaps
            assert grid.format == "PNG" and grid.size == (3 * 160 + 2 * 4, 2 * 256 + 4)
    sizes = _pngs(section)
    assert len(sizes) == sum(len(g["rows"]) * 3 for g in grids) and set(sizes) == {(160, 256)}
    # max_overlays counts tiles per attribute, in whole rows: 3 tiles = one row of 3 methods
    assert len(_pngs(attribution_section_html(factor_run, max_overlays=3))) == 3 * len(grids)


def test_overlay_tile_marks_truth_and_peak() -> None:
    from mammoclip.attribution.outputs import overlay

    image = np.zeros((40, 20), np.uint8)
    heat = np.zeros((40, 20), np.float32)
    heat[30, 5] = 1.0
    tile = overlay(image, heat, "factor  IoU 0.00", truth=np.array([[10, 4, 18, 12]]), peak=(5.5, 30.5), height=80)
    assert tile.shape == (80, 40, 3)
    assert tuple(tile[8 * 2 + 8, 10 * 2]) == (0, 255, 0)  # left edge of the truth box, scaled by 2
    assert tuple(tile[61, 11]) == (255, 255, 255)  # the peak's cross at (11, 61) on the tile


def test_verdict_follows_beats_breast_prior(factor_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(factor_run, run)
    res = json.loads((run / "results.json").read_text())
    for verdict, words in (({"pointing": True, "hit@0.25": True}, "FActOR beats the breast prior"),
                           ({"pointing": True, "hit@0.25": False},
                            "FActOR does NOT beat the breast prior: not localizing (its 95% CI is above the "
                            "prior's on pointing but not on hit@0.25)"),
                           ({"pointing": False, "hit@0.25": False},
                            "FActOR does NOT beat the breast prior: not localizing (its 95% CI is not above the "
                            "prior's on pointing, hit@0.25)"),
                           ({"pointing": None, "hit@0.25": None}, "no verdict")):
        res["beats_breast_prior"] = {"mass": verdict}
        (run / "results.json").write_text(json.dumps(res))
        assert f"<b>mass: {html.escape(words)}" in attribution_section_html(run)


def test_missing_or_foreign_results_are_data_errors(factor_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'results.json'))}: missing"):
        attribution_section_html(tmp_path)
    with pytest.raises(DataError, match=r"results.json: missing; pass a folder written by `mammoclip detect eval"):
        detection_section_html(tmp_path)
    with pytest.raises(DataError, match=r"not a mammoclip detect eval run \(task is None, expected 'detect-eval'\)"):
        detection_section_html(factor_run)
    (tmp_path / "results.json").write_text(json.dumps({"task": "detect-eval"}))
    with pytest.raises(DataError, match=r"not a mammoclip factor eval run \(kind is None"):
        attribution_section_html(tmp_path)
    with pytest.raises(DataError, match="a detection run without per-class results"):
        detection_section_html(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataError, match="results.json: not a valid JSON file"):
        detection_section_html(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"results.json: expected a JSON object \(the results of `mammoclip detect"):
        detection_section_html(tmp_path)


def test_detection_section_shows_the_run(synthetic_cohort: Path, tmp_path: Path) -> None:
    from mammoclip.detect.config import DetectorCfg
    from mammoclip.detect.model import build_detector
    from mammoclip.detect.run import evaluate_detector

    torch.manual_seed(0)
    det = build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), fpn_channels=32, score_thresh=0.0,
                                                       max_detections=3), init="random")
    evaluate_detector(det, synthetic_cohort, split="train", out_dir=tmp_path, n_boot=10, overlays=3)
    res = json.loads((tmp_path / "results.json").read_text())
    page = (tmp_path / "index.html").read_text()
    section = detection_section_html(tmp_path, max_overlays=3)
    assert section in page and page.startswith("<!doctype html>")
    mass = res["classes"]["mass"]
    for protocol in ("all_images", "positives_only"):
        keys = [k for k in mass[protocol] if k.startswith("froc@")]
        assert len(keys) == 7  # 0.125 .. 8 false positives per image
        for key in ("ap50", "coco_ap", "froc_mean", *keys):
            assert _ci(mass[protocol][key]) in section, (protocol, key)
    assert "sensitivity at 0.125 FP/image" in section and "sensitivity at 8 FP/image" in section
    assert f"{mass['n_images']} images, {mass['n_positive_images']} with a mass box" in section
    sizes = _pngs(section)
    assert len(sizes) == 2 + 3 and all(w > 200 for w, _ in sizes[:2])  # FROC, PR, then 3 overlays
    assert sizes[2:] == [(160, 256)] * 3
    small = detection_section_html(tmp_path, max_overlays=1)
    assert len(_pngs(small)) == 3 and "2 more in overlays/" in small


def _cells(section: str, table_class: str) -> list[list[str]]:
    """Rows of the tables of one class (header rows left out) as lists of cell HTML."""
    rows = []
    for table in re.findall(rf"<table class={table_class}>(.*?)</table>", section):
        for row in re.findall(r"<tr>(.*?)</tr>", table):
            cells = re.findall(r"<td>(.*?)</td>", row)
            if cells:
                rows.append(cells)
    return rows


def _distinct(e: dict[str, Any], v: float) -> None:
    e.update(value=v, ci_low=v / 2, ci_high=(v + 1) / 2)


def test_every_cell_sits_in_its_row_and_column(factor_run: Path, synthetic_cohort: Path, tmp_path: Path) -> None:
    """An untrained model scores mostly 0: give every estimate its own number and check where it lands."""
    run = tmp_path / "factor"
    shutil.copytree(factor_run, run)
    res = json.loads((run / "results.json").read_text())
    for i, r in enumerate(res["metrics"]):
        _distinct(r, (i + 1) / 1000)
    (run / "results.json").write_text(json.dumps(res))
    rows = _cells(attribution_section_html(run), "localization-metrics")
    want = {}
    for r in res["metrics"]:
        want.setdefault((r["attribute"], r["method"]), {})[r["metric"]] = _ci(r)
    expected = [[m, *(want[(a, m)][k] for k in ("pointing", "hit@0.25", "hit@0.5", "energy"))]
                for a in res["attributes"] for m in res["methods"] if (a, m) in want]
    assert rows == expected and len(rows) == 6

    det_dir = tmp_path / "det"
    det_dir.mkdir()
    froc = [f"froc@{f:g}" for f in (0.125, 0.25, 0.5, 1, 2, 4, 8)]
    keys = ["ap50", "coco_ap", "froc_mean", *froc]
    entry: dict[str, Any] = {"n_images": 12, "n_positive_images": 2, "n_boxes": 3}
    for p, protocol in enumerate(("all_images", "positives_only")):
        entry[protocol] = {}
        for k, key in enumerate(keys):
            entry[protocol][key] = {}
            _distinct(entry[protocol][key], 0.5 * p + (k + 1) / 100)
    entry["positives_only"]["froc@8"]["ci_low"] = None  # n_boot 0 or a NaN: written as null, shown as –
    (det_dir / "results.json").write_text(json.dumps({"task": "detect-eval", "split": "test", "n_boot": 5,
                                                      "classes": {"mass": entry}}))
    rows = _cells(detection_section_html(det_dir), "detection-metrics")
    assert [r[0] for r in rows][:3] == ["VOC AP@0.5", "COCO AP (IoU 0.5:0.95)",
                                       "FROC mean sensitivity (0.125–8 FP/image)"]
    assert [r[1:] for r in rows] == [[_ci(entry["all_images"][k]), _ci(entry["positives_only"][k])] for k in keys]
    assert rows[-1][2] == "0.600 <span class=meta>[–, 0.800]</span>"  # froc@8, positives only
