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
