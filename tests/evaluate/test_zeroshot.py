"""Zero-shot on the synthetic cohort with mammoclip-tiny: CSVs, metrics, plots, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mammoclip.cli.main import main
from mammoclip.data.datasets import to_tensor
from mammoclip.data.manifest import load_bundle
from mammoclip.data.transforms import normalize_images
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate import zeroshot as zs_mod
from mammoclip.evaluate.tasks import get_task
from mammoclip.evaluate.zeroshot import class_embeddings, load_prompts, run_zeroshot
from mammoclip.imaging.imageio import read_image


def test_zeroshot_writes_per_image_and_per_breast_outputs(tiny_model, eval_cohort: Path, tmp_path: Path,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = zs_mod.encode_texts
    monkeypatch.setattr(zs_mod, "encode_texts", lambda m, t, **kw: calls.append(len(t)) or real(m, t, **kw))
    bundle = load_bundle(eval_cohort)
    res = run_zeroshot(tiny_model, bundle, "mass", prompts="ensemble", out_dir=tmp_path, split="all", n_boot=50)
    assert len(calls) == 1, "prompt embeddings are computed once"

    preds = pd.read_csv(tmp_path / "predictions.csv")
    breast = pd.read_csv(tmp_path / "predictions_breast.csv")
    assert len(preds) == len(bundle.images)
    assert len(breast) == 2 * bundle.images["patient_id"].nunique()
    assert np.allclose(preds[["p_no_mass", "p_mass"]].sum(axis=1), 1.0)
    # per breast = max over its views
    one = breast.iloc[0]
    views = preds[(preds["patient_id"].astype(str) == str(one["patient_id"])) & (preds["laterality"] == one["laterality"])]
    assert one["p_mass"] == pytest.approx(views["p_mass"].max())

    # the streamed score of one image equals a direct computation
    row = bundle.images.iloc[5]
    x = normalize_images(to_tensor(read_image(bundle.abspath(row["path"])))[None], tiny_model.preprocess_cfg)
    with torch.no_grad():
        w = class_embeddings(tiny_model, load_prompts(get_task("mass"), "ensemble"))
        direct = (tiny_model.encode_image(x) @ w.T).softmax(-1)[0, 1].item()
    assert preds.loc[preds["image_id"] == row["image_id"], "p_mass"].item() == pytest.approx(direct, abs=1e-5)

    saved = json.loads((tmp_path / "results.json").read_text())
    for level in ("image", "breast"):
        auc = saved["metrics"][level]["auc"]
        assert 0.0 <= auc["value"] <= 1.0 and auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert res["counts"]["n_breasts"] == len(breast)
    with Image.open(tmp_path / "roc.png") as im:
        assert im.format == "PNG"
    assert "roc" in (tmp_path / "index.html").read_text()


def test_zeroshot_multiclass_and_prompt_file(tiny_model, eval_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    prompts = tmp_path / "density.json"
    prompts.write_text(json.dumps({c: [f"breast density {c}", f"ACR {c} density"] for c in "ABCD"}))
    res = run_zeroshot(tiny_model, load_bundle(eval_cohort), "density", prompts=prompts, out_dir=tmp_path / "run",
                       split="all", n_boot=20)
    assert set(res["metrics"]["image"]) >= {"accuracy", "macro_f1", "balanced_accuracy", "ece"}
    with Image.open(tmp_path / "run" / "confusion.png") as im:
        assert im.format == "PNG"
    prompts.write_text(json.dumps({"A": ["a"], "B": ["b"]}))
    with pytest.raises(ConfigError, match="4 classes"):
        run_zeroshot(tiny_model, load_bundle(eval_cohort), "density", prompts=prompts, split="all")


def test_zeroshot_bad_input(tiny_model, eval_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bundle = load_bundle(eval_cohort)
    without = load_bundle(eval_cohort)
    without.images = without.images.drop(columns=["mass"])
    with pytest.raises(DataError, match="no column 'mass'"):
        run_zeroshot(tiny_model, without, "mass", split="all")
    with pytest.raises(ConfigError, match="unknown task"):
        run_zeroshot(tiny_model, bundle, "spiculation")
    # images of another size than the model's input: a clear error, unless resizing is allowed
    copy = tmp_path / "c"
    shutil.copytree(eval_cohort.parent, copy)
    small = load_bundle(copy)
    small.images = small.images.drop(columns=[c for c in ("height", "width") if c in small.images.columns])
    first = small.abspath(small.images["path"].iloc[0])
    img = Image.open(first)
    img.resize((40, 64)).save(first)
    with pytest.raises(DataError, match="expects 128x80"):
        run_zeroshot(tiny_model, small, "mass", split="all")


def test_zeroshot_cli(eval_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zs"
    rc = main(["zeroshot", "--checkpoint", "mammoclip-tiny", "--manifest", str(eval_cohort), "--task", "malignancy",
               "--prompts", "paper", "--split", "all", "--workers", "0", "--n-boot", "20", "--out", str(out)])
    assert rc == 0
    assert "image_auc" in capsys.readouterr().out
    assert (out / "index.html").exists() and (out / "predictions_breast.csv").exists()


def test_zeroshot_single_class_split_gives_nan_not_error(tiny_model, eval_cohort: Path) -> None:  # noqa: ANN001
    """Pre-training's epoch-end evaluator scores a small val split that may lack positives."""
    bundle = load_bundle(eval_cohort)
    bundle.images = bundle.images[bundle.images["mass"] == 0].reset_index(drop=True)
    res = run_zeroshot(tiny_model, bundle, "mass", split="all", n_boot=0)
    assert np.isnan(res["summary"]["image_auc"]) and res["notes"]
    assert 0.0 <= res["metrics"]["image"]["accuracy"]["value"] <= 1.0
