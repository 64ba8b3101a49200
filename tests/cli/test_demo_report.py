"""The demo report without running the demo (issue 19, item 8): a small fake ``results.json`` and fake
predictions; every probe row gets a CI, images are inlined, plots say in words what their axes are."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mammoclip.demo import probe_auc_ci, training_curves_figure
from mammoclip.demo_report import render_demo_html, write_demo_html
from mammoclip.evaluate import report as R
from mammoclip.evaluate.metrics import binary_metrics

PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _predictions(seeds: int = 3, patients: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for p in range(patients):
            for view in ("CC", "MLO"):
                label = int(p % 3 == 0)
                rows.append({"init": "pretrained", "fraction": 0.5, "seed": seed, "image_id": f"{p}-{view}",
                             "patient_id": f"P{p}", "laterality": "L", "view": view, "label": label,
                             "p_no_mass": 0.0, "p_mass": float(np.clip(0.3 + 0.3 * label + rng.normal(0, 0.2), 0, 1))})
    return pd.DataFrame(rows)


def _results(tmp_path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    (tmp_path / "figures").mkdir(parents=True)
    (tmp_path / "figures" / "grid.png").write_bytes(PNG_1PX)
    (tmp_path / "roc.png").write_bytes(PNG_1PX)
    return {
        "version": "0.1.0", "finished": "now", "machine": "test", "model": "mammoclip-lite", "total_seconds": 3000.0,
        "cohort": {"patients": 30, "images": 60, "failures": 0, "image_size": "256x160", "splits": {}},
        "pretrain": {"epochs": 4, "steps": 100, "seconds": 2570.0, "val_loss_first": 2.0, "val_loss_best": 1.5},
        "table": rows,
        "figures": {"cohort_grid": {"path": "figures/grid.png", "caption": "grid"},
                    "zeroshot_roc_mass": {"path": "roc.png", "caption": "Zero-shot ROC. Shaded bands: 95% CIs."}},
        "files": {},
    }


def _zs(init: str, metric: str, value: float) -> dict[str, Any]:
    return {"evaluation": "zero-shot", "task": "mass", "init": init, "fraction": None, "metric": metric,
            "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}


def test_probe_ci_is_the_patient_bootstrap_of_the_seed_averaged_scores() -> None:
    preds = _predictions()
    lo, hi = probe_auc_ci(preds, "pretrained", 0.5, n_boot=200, seed=0)
    avg = preds.groupby("image_id").agg(label=("label", "first"), s=("p_mass", "mean"))
    auc = binary_metrics(avg["label"].to_numpy(), avg["s"].to_numpy())["auc"]
    assert lo is not None and hi is not None
    assert lo < auc < hi and 0.0 <= lo and hi <= 1.0 and hi - lo > 0.01
    assert probe_auc_ci(preds, "pretrained", 0.5, n_boot=200, seed=0) == (lo, hi)  # seeded: reproducible
    assert probe_auc_ci(preds, "random", 0.5, n_boot=200) == (None, None)  # no such row
    one_class = preds.assign(label=0)
    assert probe_auc_ci(one_class, "pretrained", 0.5, n_boot=200) == (None, None)


def test_report_inlines_images_names_the_pretraining_time_and_explains_rows(tmp_path: Path) -> None:
    rows = [_zs("pretrained", "AUC (per image)", 0.7), _zs("pretrained", "AUC (per breast)", 0.7),
            _zs("imagenet", "AUC (per image)", 0.45), _zs("imagenet", "AUC (per breast)", 0.45),
            {"evaluation": "linear probe", "task": "mass", "init": "pretrained", "fraction": 0.5,
             "metric": "AUC (per image, mean of 3 seeds)", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9}]
    page = render_demo_html(_results(tmp_path, rows), tmp_path)
    assert "a few minutes" not in page and "pre-trained for 43 min (2570 s)" in page
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    table = page[page.index("id='results-table'"):page.index("</table>", page.index("id='results-table'"))]
    probe_rows = [r for r in table.split("<tr>") if "linear probe" in r]
    assert probe_rows and all("–" not in r.replace("0.700–0.900", "") for r in probe_rows)
    assert "0.700–0.900" in probe_rows[0]
    text = html.unescape(page)
    assert "ImageNet zero-shot below 0.5" in text and "mass AUC (per image) 0.450" in text
    assert "Per-image and per-breast rows are identical" in text
    assert "seed-averaged" in text

    # two views per breast: different numbers, no such note; no ImageNet row below 0.5: no such note
    rows[1] = _zs("pretrained", "AUC (per breast)", 0.75)
    rows[2] = _zs("imagenet", "AUC (per image)", 0.55)
    rows[3] = _zs("imagenet", "AUC (per breast)", 0.55)
    page = render_demo_html(_results(tmp_path / "b", rows), tmp_path / "b")
    assert "rows are identical" not in page and "below 0.5" not in page


def test_written_page_works_when_copied_alone(tmp_path: Path) -> None:
    import json

    results = _results(tmp_path, [_zs("pretrained", "AUC (per image)", 0.7)])
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = write_demo_html(tmp_path / "results.json")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    copy = alone / "index.html"
    copy.write_text(page.read_text())
    assert "figures/grid.png'" not in copy.read_text() and copy.read_text().count("data:image/png;base64,") == 2


# --- plots: words on every axis, legends off the data -------------------------------------------------


RAW_KEY = re.compile(r"\b(test_auc|val/loss|zeroshot/|image_auc|sensitivity_at_spec)\b")


def _check_axes(fig: Any) -> None:
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        for text in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()):
            assert not RAW_KEY.search(text), text
        legend = ax.get_legend()
        if legend is not None:
            for t in legend.get_texts():
                assert not RAW_KEY.search(t.get_text()), t.get_text()
            # anchored outside the axes box (below or to the right): it cannot cover a data point
            x0, y0 = legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).p0
            assert x0 >= 1.0 or y0 <= 0.0, (x0, y0)


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    figs: list[Any] = []
    original = R._save

    def save(fig: Any, path: Any) -> Path:
        fig.canvas.draw()
        _check_axes(fig)
        ax = fig.axes[0]  # what the tests read, taken before _save clears the figure
        legend = ax.get_legend()
        figs.append({"ylabel": ax.get_ylabel(), "legend_title": legend.get_title().get_text(),
                     "legend": [t.get_text() for t in legend.get_texts()]})
        return original(fig, path)

    monkeypatch.setattr(R, "_save", save)
    return figs


def test_data_efficiency_and_roc_plots_are_labelled_in_words(captured: list[Any], tmp_path: Path) -> None:
    table = pd.DataFrame([{"init": i, "fraction": f, "seed": s, "test_auc": 0.6 + 0.1 * f + 0.01 * s}
                          for i in ("pretrained", "random") for f in (0.1, 1.0) for s in (0, 1, 2)])
    R.plot_data_efficiency(table, "test_auc", tmp_path / "de.png", title="linear probe mass")
    assert captured[0]["ylabel"] == "test AUC (mean over seeds)"
    assert "±1 sd" in captured[0]["legend_title"] and "3 seeds" in captured[0]["legend_title"]

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    s = np.clip(y * 0.3 + rng.uniform(0, 0.7, 40), 0, 1)
    R.plot_roc({"per image": (y, s, np.arange(40) // 2)}, tmp_path / "roc.png", n_boot=20)
    assert any("95% CI" in t for t in captured[1]["legend"])
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_training_curves_are_labelled_in_words() -> None:
    records = [{"step": i, "loss": 2.0 - 0.01 * i} for i in range(0, 50, 5)]
    records += [{"step": 25, "val/loss": 1.8, "zeroshot/mass/image_auc": 0.6},
                {"step": 50, "val/loss": 1.6, "zeroshot/mass/image_auc": 0.7}]
    fig = training_curves_figure(records)
    fig.canvas.draw()
    _check_axes(fig)
    assert [ax.get_ylabel() for ax in fig.axes] == ["contrastive loss", "zero-shot AUC"]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "mass AUC (per image)" in legend


def test_metric_labels_and_table_headers() -> None:
    assert R.metric_label("sensitivity_at_spec") == "sensitivity at 90 % specificity"
    assert R.metric_label("sensitivity_at_spec", 0.95) == "sensitivity at 95 % specificity"
    assert R.metric_label("test_auc") == "test AUC"
    metrics = {"image": {"auc": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8},
                         "sensitivity_at_spec": {"value": 0.4, "ci_low": 0.2, "ci_high": 0.5}},
               "breast": {"auc": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8},
                          "sensitivity_at_spec": {"value": 0.4, "ci_low": 0.2, "ci_high": 0.5}}}
    table = R.metrics_table(metrics)
    assert "sensitivity at 90 % specificity" in table and "sensitivity_at_spec" not in table
    assert "identical" in table and "single-view" in table
    metrics["breast"]["auc"] = {"value": 0.75, "ci_low": 0.6, "ci_high": 0.8}
    assert "identical" not in R.metrics_table(metrics)


# --- localization and attribution (issues 14, 15) -----------------------------------------------------


def _est(value: float, half: float = 0.1) -> dict[str, float]:
    return {"value": value, "ci_low": value - half, "ci_high": value + half}


def _detect_eval(ap: float) -> dict[str, Any]:
    """What ``evaluate_detector`` returns for the mass class (the parts the demo reads)."""
    proto = {"ap50": _est(ap), "froc_mean": _est(ap + 0.2), "coco_ap": {"value": float("nan"), "ci_low": float("nan"),
                                                                         "ci_high": float("nan")}}
    return {"task": "detect-eval", "split": "test", "n_boot": 50, "classes": {"mass": {
        "n_images": 40, "n_positive_images": 12, "n_boxes": 13, "all_images": proto,
        "positives_only": {**proto, "ap50": _est(ap + 0.05)}}}}


def _factor_eval(factor_pointing: float, beats: dict[str, bool | None]) -> dict[str, Any]:
    """What ``evaluate_localization`` returns (the parts the demo reads)."""
    metrics = []
    for method, pointing in (("factor", factor_pointing), ("breast_prior", 0.12)):
        for attribute in ("mass", "calcification"):
            for metric, value in (("pointing", pointing), ("hit@0.25", pointing - 0.01), ("hit@0.5", 0.01)):
                metrics.append({"method": method, "attribute": attribute, "metric": metric, **_est(value, 0.05),
                                "n_images": 20, "n_patients": 9})
    return {"kind": "factor-localization", "split": "test", "methods": ["factor", "breast_prior"], "tap": -2,
            "top_k": 32, "n_boot": 50, "attributes": ["mass", "calcification"], "metrics": metrics,
            "beats_breast_prior": {"mass": {"pointing": beats["mass"], "hit@0.25": beats["mass"]},
                                   "calcification": {"pointing": beats["calcification"], "hit@0.25": False}}}


def _with_localization(tmp_path: Path) -> dict[str, Any]:
    from mammoclip.demo import attribution_summary, localization_summary

    results = _results(tmp_path, [_zs("pretrained", "AUC (per image)", 0.7)])
    runs = {init: {"run_dir": f"runs/detect-{init}", "eval_dir": f"runs/detect-{init}/test", "best_epoch": 1,
                   "results": _detect_eval(ap)} for init, ap in (("pretrained", 0.31), ("imagenet", 0.22))}
    results["localization"] = localization_summary({"runs": runs, "settings": {
        "detector": {"fpn_channels": 64, "anchor_scale": 3.0}, "epochs": 2, "label_fraction": 0.35}})
    results["attribution"] = attribution_summary({"run_dir": "runs/factor", "eval_dir": "runs/factor/eval", "epochs": 20,
                                                  "results": _factor_eval(0.08, {"mass": False, "calcification": None})})
    return results


def test_headline_numbers_are_finite_json_with_the_verdict_as_computed(tmp_path: Path) -> None:
    import json

    results = _with_localization(tmp_path)
    loc = results["localization"]
    assert set(loc["inits"]) == {"pretrained", "imagenet"}
    pre = loc["inits"]["pretrained"]["protocols"]
    assert pre["all_images"]["ap50"] == pytest.approx(_est(0.31))
    assert pre["positives_only"]["ap50"]["value"] == pytest.approx(0.36)
    assert pre["all_images"]["coco_ap"] == {"value": None, "ci_low": None, "ci_high": None}  # NaN is not JSON
    assert "NaN" not in json.dumps(results)
    attr = results["attribution"]
    assert attr["metrics"]["factor"]["mass"]["pointing"]["value"] == pytest.approx(0.08)
    assert set(attr["metrics"]["factor"]["mass"]) == {"pointing", "hit@0.25"}  # hit@0.5 stays in the run's file
    assert attr["n_images"] == {"mass": 20, "calcification": 20}
    # one undecided metric makes the attribute undecided; a lost one makes it lost
    assert attr["verdict"] == {"mass": False, "calcification": None}
    won = _factor_eval(0.5, {"mass": True, "calcification": True})
    won["beats_breast_prior"]["calcification"]["hit@0.25"] = True
    from mammoclip.demo import attribution_summary

    assert attribution_summary({"run_dir": "r", "eval_dir": "e", "epochs": 1, "results": won})["verdict"] == {
        "mass": True, "calcification": True}


def test_report_has_localization_and_attribution_sections_from_the_run_folders(tmp_path: Path) -> None:
    import json

    results = _with_localization(tmp_path)
    for init, ap in (("pretrained", 0.31), ("imagenet", 0.22)):
        d = tmp_path / "runs" / f"detect-{init}" / "test"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_detect_eval(ap)))
    d = tmp_path / "runs" / "factor" / "eval"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(_factor_eval(0.08, {"mass": False, "calcification": None})))
    page = render_demo_html(results, tmp_path)
    text = html.unescape(page)
    assert "4. Localization (detection)" in text and "5. Attribution (Mammo-FActOR)" in text and "6. Files" in text
    table = page[page.index("id='localization-table'"):page.index("</table>", page.index("id='localization-table'"))]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 4 and "pretrained" in rows[0] and "0.310" in rows[0] and "0.210–0.410" in rows[0]
    assert "0.360" in rows[1] and "imagenet" in rows[2] and "0.220" in rows[2]
    # the runs' own sections (evaluate.sections), headings one level below the demo's
    assert page.count("<section class=detection>") == 2 and page.count("<section class=attribution>") == 1
    assert "<h3>Detection</h3>" in page and "<h2>Detection</h2>" not in page
    attr_table = page[page.index("id='attribution-table'"):page.index("</table>", page.index("id='attribution-table'"))]
    assert attr_table.count("<tr>") == 1 + 4 and "0.080" in attr_table
    assert "mass: FActOR does NOT beat the breast prior" in text
    assert "calcification: no verdict" in text


def test_report_survives_a_skipped_stage_and_a_missing_run_folder(tmp_path: Path) -> None:
    results = _with_localization(tmp_path)  # no run folders written: the details are missing
    page = html.unescape(render_demo_html(results, tmp_path))
    assert page.count("Details not shown") == 3 and "id='localization-table'" in page
    results["localization"] = {"class": "mass", "skipped": "boxes.csv: no 'mass' box in split 'test'"}
    del results["attribution"]
    page = html.unescape(render_demo_html(results, tmp_path))
    assert "Not run on this cohort: boxes.csv: no 'mass' box in split 'test'" in page
    assert "Attribution" not in page and "5. Files" in page
