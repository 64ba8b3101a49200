"""official_csv on tables shaped like the originals (docs/original.md §8): the VinDr image-text table
with its own ``split`` and no text, ``clip_pretrain_100.csv`` with separate findings/impressions,
label columns carried, missing columns named."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.adapters import build_bundle, get_adapter
from mammoclip.data.manifest import validate_manifest
from mammoclip.errors import DataError


def vindr_table(path: Path, n: int = 40) -> Path:
    """Like ``clip_vindr_final.csv``: one row per breast, ``split`` training/test, fold test->0, no text."""
    rows = []
    for p in range(n):
        for lat in "LR":
            test = p % 4 == 0
            rows.append({"patient_id": f"st{p}", "laterality": lat, "split": "test" if test else "training",
                         "image": f"['{p}{lat}cc.png', '{p}{lat}mlo.png']", "view": "['CC', 'MLO']",
                         "CC": f"['{p}{lat}cc.png']", "MLO": f"['{p}{lat}mlo.png']",
                         "cc_findings": "['No Finding']", "mlo_findings": "['No Finding']",
                         "fold": 0 if test else 1, "Mass": int(p % 5 == 1 and lat == "L"),
                         "Suspicious_Calcification": int(p % 7 == 2), "density": str(p % 4),
                         "breast_birads": f"BI-RADS {1 + p % 5}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_vindr_table_honours_split_and_carries_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = vindr_table(tmp_path / "clip_vindr_final.csv")
    with caplog.at_level(logging.WARNING):
        bundle = build_bundle(csv)
    assert not validate_manifest(bundle.images)
    img = bundle.images.set_index("image_id")
    assert len(img) == 160
    test_patients = {f"st{p}" for p in range(0, 40, 4)}
    assert set(img.loc[img["patient_id"].isin(test_patients), "split"]) == {"test"}  # not val (fold 0)
    others = img.loc[~img["patient_id"].isin(test_patients), "split"]
    assert set(others) == {"train", "val"} and 0 < (others == "val").sum() < (others == "train").sum()
    assert img.groupby("patient_id")["split"].nunique().max() == 1
    # labels: column names normalised, density 0-3 -> A-D, BI-RADS text -> number
    assert (img.loc["1Lcc", "mass"], img.loc["1Rcc", "mass"], img.loc["2Lmlo", "calcification"]) == (1, 0, 1)
    assert img["mass"].sum() == 2 * 8 and img["calcification"].sum() == 2 * 2 * 6
    assert (img.loc["3Rcc", "density"], img.loc["3Rcc", "birads"], img.loc["4Lcc", "birads"]) == ("D", 4, 5)
    assert str(img["birads"].dtype) == "Int64"
    # no text: no empty reports, one warning line with counts
    assert len(bundle.reports) == 0 and img["report_id"].isna().all()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "80 of 80 breasts have no report text (text columns present: none)" in lines[0]
    with pytest.raises(DataError, match="no breast has report text .* not an image-text table"):
        get_adapter("official_csv").load(csv, require_text=True)


def test_pretrain_table_text_from_findings_and_impressions(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    rows = []
    for p in range(5):
        for lat in "LR":
            text = "['mass in the upper outer quadrant', 'Birads: 4']" if p < 2 else ""
            rows.append({"patient_id": str(p), "laterality": lat, "image": f"['{p}{lat}a.png', '{p}{lat}b.png']",
                         "view": "['CC', 'MLO']", "CC": f"['{p}{lat}a.png']", "MLO": f"['{p}{lat}b.png']",
                         "text": text, "findings": "scattered calcifications" if p in (2, 3) else "",
                         "impressions": "Birads: 2" if p == 2 else "", "text_augment": "['a', 'b']",
                         "fold": p % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "clip_pretrain_100.csv", index=False)
    with caplog.at_level(logging.WARNING):
        bundle = build_bundle(tmp_path / "clip_pretrain_100.csv", images=tmp_path / "png")
    reports = bundle.reports.set_index("report_id")
    assert sorted(reports.index) == ["0_L", "0_R", "1_L", "1_R", "2_L", "2_R", "3_L", "3_R"]
    assert reports.loc["0_L", "findings"] == "mass in the upper outer quadrant"
    assert (reports.loc["2_R", "findings"], reports.loc["2_R", "impression"]) == ("scattered calcifications",
                                                                                 "Birads: 2")
    assert reports.loc["3_L", "text"] == "scattered calcifications" and reports.loc["1_R", "text_augment"] == "['a', 'b']"
    img = bundle.images.set_index("image_id")
    assert img.loc[img["patient_id"] == "4", "report_id"].isna().all() and img.loc["3Lb", "report_id"] == "3_L"
    assert img.loc["3Lb", "path"] == str(tmp_path / "png" / "3" / "3Lb.png")
    # no split column: the original's fold convention (fold 0 -> val, others -> train)
    assert img.groupby("patient_id")["split"].first().to_dict() == {"0": "val", "1": "train", "2": "val",
                                                                    "3": "train", "4": "val"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 of 10 breasts have no report text" in lines[0]
    assert "['text', 'findings', 'impressions']" in lines[0]


def test_image_view_lists_without_cc_mlo_columns(tmp_path: Path) -> None:
    table = pd.DataFrame({"patient_id": ["7", "7"], "laterality": ["LEFT", "RIGHT"],
                          "image": ["['a.png', 'b.png']", "['c.png']"], "view": ["['CC', 'MLO']", "['mlo']"],
                          "text": ["['f', 'i']", "['g', '']"], "split": ["Validation", "val"]})
    table.to_csv(tmp_path / "t.csv", index=False)
    assert get_adapter("official_csv").detect(tmp_path / "t.csv")
    img = build_bundle(tmp_path / "t.csv").images.set_index("image_id")
    assert img[["laterality", "view", "split"]].to_dict("index") == {
        "a": {"laterality": "L", "view": "CC", "split": "val"}, "b": {"laterality": "L", "view": "MLO", "split": "val"},
        "c": {"laterality": "R", "view": "MLO", "split": "val"}}


@pytest.mark.parametrize(("table", "message"), [
    ({"patient_id": ["1"], "laterality": ["L"], "CC": ["['a.png']"]},
     r"missing columns \['MLO'\] \(or 'image' and 'view'\)"),
    ({"patient_id": ["1"], "CC": ["['a.png']"], "MLO": ["[]"]}, r"missing columns \['laterality'\]"),
    ({"patient_id": ["1"], "laterality": ["L"], "CC": ["['a.png']"], "MLO": ["[]"], "split": ["holdout"]},
     r"column 'split': 1 image\(s\) with values \['holdout'\]"),
    ({"patient_id": ["1"], "laterality": ["X"], "CC": ["['a.png']"], "MLO": ["[]"]},
     r"row 0, column 'laterality': 'X' is not L/R"),
    ({"patient_id": ["1"], "laterality": ["L"], "CC": ["['a.png']"], "MLO": ["[]"], "density": ["E"]},
     r"column 'density' \(density\): 1 value\(s\) not in A-D"),
    ({"patient_id": ["1"], "laterality": ["L"], "image": ["['a.png', 'b.png']"], "view": ["['CC']"]},
     r"2 images but 1 views"),
])
def test_unreadable_tables_name_the_problem(tmp_path: Path, table: dict[str, list[str]], message: str) -> None:
    pd.DataFrame(table).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=message):
        get_adapter("official_csv").load(tmp_path / "t.csv")


def test_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = vindr_table(tmp_path / "clip_vindr_final.csv", n=8)
    assert main(["manifest", "build", str(csv), "--require-text", "--out", str(tmp_path / "m")]) == 2
    assert "no breast has report text" in capsys.readouterr().err
    assert main(["manifest", "build", str(csv), "--images", str(tmp_path / "png"), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "32 images, 0 boxes, 0 reports" in out and "labels: density 32, birads 32, mass 32, calcification 32" in out
    manifest = pd.read_csv(tmp_path / "m" / "manifest.csv")
    assert manifest["path"].str.startswith(str((tmp_path / "png").resolve())).all()
    assert main(["manifest", "build", str(csv), "--adapter", "folder", "--images", "x", "--out", "o"]) == 2
    assert "--images works only with --adapter official_csv" in capsys.readouterr().err
