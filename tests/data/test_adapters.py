"""Adapters: small fixtures in each source's documented columns -> valid bundles; manifest CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.adapters import build_bundle, get_adapter, list_adapters
from mammoclip.data.manifest import load_bundle, validate_manifest
from mammoclip.data.preprocess import PreprocessOptions, preprocess
from mammoclip.errors import ConfigError, DataError
from tests.imaging.dicom_factory import phantom, write_dicom


def _valid(bundle) -> None:  # noqa: ANN001
    problems = validate_manifest(bundle.images)
    assert not problems, [str(p) for p in problems]


def write_vindr(root: Path, *, with_images: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
            "breast_birads", "breast_density", "split"]
    breast = []
    for s in range(12):
        for lat in "LR":
            for view in ("CC", "MLO"):
                breast.append([f"st{s}", "se", f"im{s}{lat}{view}", lat, view, 400, 256, f"BI-RADS {1 + s % 5}",
                               f"DENSITY {'ABCD'[s % 4]}", "training" if s < 9 else "test"])
    pd.DataFrame(breast, columns=base).to_csv(root / "breast-level_annotations.csv", index=False)
    findings = []
    for row in breast:
        findings.append(row + ["['No Finding']", "", "", "", "", ""])
    # st0 LCC: two finding rows (mass with a box, then calcification + asymmetry with a box)
    findings[0] = breast[0] + ["['Mass']", "BI-RADS 4", 76.0, 186.0, 105.0, 215.0]
    findings.insert(1, breast[0] + ["['Suspicious Calcification', 'Focal Asymmetry']", "BI-RADS 3", 10, 10, 20, 30])
    # st1 RMLO: architectural distortion without a box
    idx = [i for i, f in enumerate(findings) if f[2] == "im1RMLO"][0]
    findings[idx] = findings[idx][:10] + ["['Architectural Distortion']", "BI-RADS 4", "", "", "", ""]
    cols = base + ["finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax"]
    pd.DataFrame(findings, columns=cols).to_csv(root / "finding_annotations.csv", index=False)
    if with_images:
        write_dicom(root / "images" / "st0" / "im0LCC.dicom", phantom((400, 256), lesion=(200, 90, 14)), bits=12)
    return root


def test_vindr_aggregates_finding_rows(tmp_path: Path) -> None:
    bundle = build_bundle(write_vindr(tmp_path / "vindr"))
    _valid(bundle)
    img = bundle.images.set_index("image_id")
    assert len(img) == 48
    a = img.loc["im0LCC"]
    assert (a["mass"], a["calcification"], a["asymmetry"], a["distortion"]) == (1, 1, 1, 0)
    assert img.loc["im1RMLO", "distortion"] == 1 and img.loc["im1RMLO", "mass"] == 0
    assert img.loc["im0LCC", "density"] == "A" and img.loc["im1LCC", "birads"] == 2
    assert img["mass"].sum() == 1 and img["calcification"].sum() == 1
    # boxes: one per category of each boxed finding row, original pixels, finding ids
    assert sorted(bundle.boxes["label"]) == ["Focal Asymmetry", "Mass", "Suspicious Calcification"]
    assert set(bundle.boxes["space"]) == {"original"} and bundle.boxes["finding_id"].nunique() == 2
    # splits: training -> train (+ a patient-level val), test -> test; no study in two splits
    assert set(img.loc[img.index.str.startswith(("im9", "im10", "im11")), "split"]) == {"test"}
    assert img.groupby("patient_id")["split"].nunique().max() == 1
    assert "val" in set(img["split"]) or len(set(img["split"])) == 2
    assert img.loc["im0LCC", "path"] == "images/st0/im0LCC.dicom"


def test_vindr_boxes_follow_preprocessing(tmp_path: Path) -> None:
    root = write_vindr(tmp_path / "vindr", with_images=True)
    bundle = build_bundle(root, adapter="vindr")
    one = bundle.images[bundle.images["image_id"] == "im0LCC"].reset_index(drop=True)
    bundle.images = one
    result = preprocess(bundle, tmp_path / "out", PreprocessOptions(size=(120, 80), window="minmax"))
    assert result.processed == 1
    out = load_bundle(tmp_path / "out")
    box = out.boxes[out.boxes["label"] == "Mass"].iloc[0]
    assert box["space"] == "processed"
    from mammoclip.imaging.imageio import read_image

    img = read_image(out.abspath(out.images["path"][0]))
    inside = img[int(np.ceil(box["ymin"])):int(box["ymax"]), int(np.ceil(box["xmin"])):int(box["xmax"])]
    assert inside.mean() > 200  # the 3800/4095 lesion under the mapped box


def test_rsna(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    (root / "train_images").mkdir(parents=True)
    cols = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
            "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]
    rows = [[1, 10 + p, 100 * p + i, "LR"[i % 2], ["CC", "MLO"][i // 2], 60, int(p == 0), 0, 0, "", 0,
             "B" if p % 2 else "", 49, False] for p in range(20) for i in range(4)]
    pd.DataFrame(rows, columns=cols).to_csv(root / "train.csv", index=False)
    bundle = build_bundle(root)
    _valid(bundle)
    assert bundle.images["source"].iloc[0] == "rsna" and bundle.images["malignant"].sum() == 4
    assert bundle.images.groupby("patient_id")["split"].nunique().max() == 1
    assert bundle.images["path"].iloc[1] == "train_images/10/1.dcm"
    folds = pd.DataFrame(rows, columns=cols).assign(fold=[r[1] % 4 for r in rows])
    folds.to_csv(root / "train.csv", index=False)
    by_fold = get_adapter("rsna").load(root, val_fold=0)
    assert set(by_fold.images.loc[by_fold.images["patient_id"].astype(int) % 4 == 0, "split"]) == {"val"}


def test_cbis_ddsm(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    root.mkdir()
    mass_cols = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                 "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                 "image file path", "cropped image file path", "ROI mask file path"]
    mass = [["P_00001", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 4, "MALIGNANT", 4,
             "Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm", "x", "y"],
            ["P_00001", 3, "LEFT", "CC", 2, "mass", "ROUND", "CIRCUMSCRIBED", 3, "BENIGN", 3,
             "Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm", "x", "y"],
            ["P_00002", 2, "RIGHT", "MLO", 1, "mass", "OVAL", "CIRCUMSCRIBED", 2, "BENIGN_WITHOUT_CALLBACK", 2,
             "Mass-Training_P_00002_RIGHT_MLO/1.2/1.3/000000.dcm", "x", "y"]]
    pd.DataFrame(mass, columns=mass_cols).to_csv(root / "mass_case_description_train_set.csv", index=False)
    calc_cols = [c.replace("mass shape", "calc type").replace("mass margins", "calc distribution")
                 .replace("breast_density", "breast density") for c in mass_cols]
    calc = [["P_00002", 2, "RIGHT", "CC", 1, "calcification", "PLEOMORPHIC", "CLUSTERED", 5, "MALIGNANT", 5,
             "Calc-Test_P_00002_RIGHT_CC/1.2/1.3/000000.dcm", "x", "y"]]
    pd.DataFrame(calc, columns=calc_cols).to_csv(root / "calc_case_description_test_set.csv", index=False)
    bundle = build_bundle(root)
    _valid(bundle)
    img = bundle.images.set_index("image_id")
    a = img.loc["Mass-Training_P_00001_LEFT_CC"]
    assert (a["mass"], a["calcification"], a["malignant"], a["birads"], a["density"], a["laterality"]) == \
        (1, 0, 1, 4, "C", "L")
    assert img.loc["Calc-Test_P_00002_RIGHT_CC", "calcification"] == 1
    # P_00002 is in the train and the test files: all of it goes to test, no leak
    assert set(img.loc[img["patient_id"] == "P_00002", "split"]) == {"test"}


def test_official_csv(tmp_path: Path) -> None:
    csv = tmp_path / "clip_pretrain.csv"
    rows = [{"patient_id": f"{p}", "laterality": lat, "image": f"['{p}_{lat}cc.png', '{p}_{lat}mlo.png']",
             "view": "['CC', 'MLO']", "CC": f"['{p}_{lat}cc.png']", "MLO": f"['{p}_{lat}mlo.png']",
             "text": "['mass in the upper outer quadrant', 'birads 4 biopsy recommended']",
             "text_augment": "['a mass upper outer', 'birads 4']", "fold": p % 3}
            for p in range(6) for lat in ("L", "R")]
    pd.DataFrame(rows).to_csv(csv, index=False)
    bundle = build_bundle(csv)
    _valid(bundle)
    assert len(bundle.images) == 24 and set(bundle.images["view"]) == {"CC", "MLO"}
    assert bundle.images.set_index("image_id").loc["3_Rmlo", "path"] == str(tmp_path / "3" / "3_Rmlo.png")
    rep = bundle.reports.set_index("report_id").loc["3_R"]
    assert rep["findings"] == "mass in the upper outer quadrant" and rep["impression"].startswith("birads 4")
    assert set(bundle.images.loc[bundle.images["patient_id"] == "3", "split"]) == {"val"}


def test_folder_with_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "export"
    for p in range(3):
        study = root / f"pat{p}" / "study1"
        for lat in "LR":
            for view in ("CC", "MLO"):
                write_dicom(study / f"{lat}{view}.dcm", phantom((64, 48)), bits=12, laterality=lat, view=view,
                            patient_id=f"pat{p}")
        (study / "report.txt").write_text("HISTORY: screening.\nFINDINGS: No suspicious mass.\n"
                                          "IMPRESSION: BI-RADS 1. Negative.\n")
    write_dicom(root / "pat0" / "study1" / "scout.dcm", phantom((64, 48)), modality="CT")  # skipped
    bundle = build_bundle(root)
    _valid(bundle)
    assert len(bundle.images) == 12 and bundle.images["source"].eq("folder").all()
    assert bundle.images["report_id"].eq(bundle.images["patient_id"] + "/study1").all()
    assert len(bundle.reports) == 3 and "No suspicious mass" in bundle.reports["text"].iloc[0]
    assert "suspicious mass" in bundle.reports["findings"].iloc[0].lower()
    [(file, reason)] = bundle.images.attrs["skipped"]
    assert file.endswith("scout.dcm") and "modality 'CT'" in reason
    # end to end through the CLI: build, validate, preprocess from the adapter source
    assert main(["manifest", "build", str(root), "--out", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    assert "12 images" in printed and "left out:" in printed and "scout.dcm: modality 'CT'" in printed
    assert main(["manifest", "validate", str(tmp_path / "m" / "manifest.csv"), "--check-files"]) == 0
    assert main(["preprocess", str(root), "--adapter", "folder", "--out", str(tmp_path / "o"),
                 "--size", "48x32", "--workers", "1"]) == 0
    assert len(load_bundle(tmp_path / "o").images) == 12
    # the file left out of the manifest is reported where batch failures go
    failures = pd.read_csv(tmp_path / "o" / "failures.csv")
    assert len(failures) == 1 and failures["file"][0].endswith("scout.dcm") and "CT" in failures["reason"][0]


def test_synthetic_cohort_preprocessed(tmp_path: Path) -> None:
    from tests.conftest import small_cohort

    manifest = small_cohort(tmp_path, n_patients=2, size=(256, 160), fmt="dicom", prevalence={"mass": 1.0})
    assert get_adapter("synthetic").detect(manifest.parent)
    result = preprocess(manifest.parent, tmp_path / "out", PreprocessOptions(size=(128, 80)))
    assert result.failed == 0 and result.processed == 8
    out = load_bundle(tmp_path / "out", check_files=True)
    assert len(out.boxes) > 0 and set(out.boxes["space"]) == {"processed"}
    from mammoclip.imaging.imageio import read_image

    for box in out.boxes.itertuples():
        if isinstance(box.mask_path, str):
            mask = read_image(out.abspath(box.mask_path)) > 0
            ys, xs = np.nonzero(mask)
            if len(xs):  # the mapped mask lies inside the mapped box (1 px slack)
                assert xs.min() >= box.xmin - 1 and xs.max() + 1 <= box.xmax + 1
                assert ys.min() >= box.ymin - 1 and ys.max() + 1 <= box.ymax + 1


def test_manifest_validate_reports_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "q"], "study_id": ["s", "t"],
                       "laterality": ["L", "X"], "view": ["CC", "CC"], "path": ["a.png", "missing.png"],
                       "split": ["train", "test"], "source": ["x", "x"]})
    df.to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["manifest", "validate", str(tmp_path), "--check-files"]) == 1
    out = capsys.readouterr().out
    assert "row 1, column 'laterality'" in out and "row 1, column 'path': file not found" in out


def test_registry_errors(tmp_path: Path) -> None:
    assert {"folder", "official_csv", "vindr", "rsna", "cbis_ddsm", "synthetic"} <= set(list_adapters())
    with pytest.raises(ConfigError, match="unknown adapter"):
        get_adapter("nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="no adapter recognises"):
        build_bundle(tmp_path / "x")
    (tmp_path / "v").mkdir()
    pd.DataFrame({"study_id": ["s"]}).to_csv(tmp_path / "v" / "breast-level_annotations.csv", index=False)
    with pytest.raises(DataError, match="missing columns"):
        build_bundle(tmp_path / "v")


def test_source_table_in_another_encoding_names_line_and_byte(tmp_path: Path) -> None:
    # an adapter's own table goes through the same reader as the manifest: one line with the position
    root = write_vindr(tmp_path / "vindr")
    table = pd.read_csv(root / "breast-level_annotations.csv")
    table.loc[4, "study_id"] = "Sénologie"  # é -> 0xe9 in latin-1, on line 6 (header is line 1)
    (root / "breast-level_annotations.csv").write_bytes(table.to_csv(index=False).encode("latin-1"))
    with pytest.raises(DataError) as err:
        build_bundle(root)
    message = str(err.value)
    assert "\n" not in message and "breast-level_annotations.csv: source table is not UTF-8" in message
    assert "first invalid byte at line 6" in message
