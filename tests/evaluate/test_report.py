"""Run-directory outputs: results.json, PNG plots that open, index.html, multi-run comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammoclip.errors import DataError
from mammoclip.evaluate.report import (
    compare_runs,
    plot_confusion,
    plot_data_efficiency,
    plot_roc,
    read_results,
    write_html_report,
    write_results,
)


def _run(tmp_path: Path, name: str, auc: float) -> Path:
    out = tmp_path / name
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = y * auc + rng.random(80)
    plot_roc({"per image": (y, s, np.arange(80) // 2)}, out / "roc.png", n_boot=20)
    table = pd.DataFrame([{"init": i, "fraction": f, "seed": s_, "test_auc": 0.6 + 0.1 * f + (i == "pretrained") * 0.1}
                          for i in ("pretrained", "random") for f in (0.1, 0.5, 1.0) for s_ in (0, 1)])
    plot_data_efficiency(table, "test_auc", out / "data_efficiency.png")
    results = {"kind": "probe", "task": "mass", "summary": {"pretrained@1 test_auc": 0.8 + auc / 10},
               "metrics": {"image": {"auc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}, "ece": {"value": float("nan")}}}}
    write_results(out, results)
    write_html_report(out, results, tables={"table": table})
    return out


def test_plots_open_and_html_embeds_them(tmp_path: Path) -> None:
    out = _run(tmp_path, "run1", 0.5)
    for png in ("roc.png", "data_efficiency.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "0.800" in page and "[0.700, 0.900]" in page
    assert read_results(out)["metrics"]["image"]["ece"]["value"] is None, "NaN is written as null"
    json.loads((out / "results.json").read_text())


def test_confusion_matrix_png(tmp_path: Path) -> None:
    path = plot_confusion(np.array([0, 1, 2, 3, 3]), np.array([0, 1, 2, 2, 3]), list("ABCD"), tmp_path / "cm.png")
    with Image.open(path) as im:
        assert im.format == "PNG"


def test_compare_runs(tmp_path: Path) -> None:
    a, b = _run(tmp_path, "runA", 0.2), _run(tmp_path, "runB", 0.9)
    page = compare_runs([a, b])
    assert "runA" in page and "runB" in page and "pretrained@1 test_auc" in page
    assert page.count("data:image/png;base64,") == 4
    with pytest.raises(DataError, match="not a run directory"):
        compare_runs([tmp_path])
