"""The manifest schema: validation with row/column, round trips, patient-level splits."""

from __future__ import annotations

import pandas as pd
import pytest

from mammoclip.data.manifest import (
    Bundle,
    assign_patient_splits,
    breast_key,
    load_bundle,
    read_boxes,
    read_manifest,
    validate_manifest,
    write_boxes,
    write_manifest,
)
from mammoclip.errors import DataError


def _rows(n_patients: int = 3) -> pd.DataFrame:
    rows = []
    for p in range(n_patients):
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                rows.append(dict(image_id=f"p{p}_{lat}_{view}", patient_id=f"p{p}", study_id=f"s{p}",
                                 laterality=lat, view=view, path=f"images/p{p}_{lat}_{view}.png",
                                 split="train" if p < 2 else "test", source="test",
                                 density="C", birads=2, mass=int(lat == "L"), report_id=f"s{p}"))
    return pd.DataFrame(rows)


def test_valid_manifest_has_no_problems_and_round_trips(tmp_path):
    df = _rows()
    assert validate_manifest(df) == []
    path = write_manifest(df, tmp_path / "manifest.csv")
    back = read_manifest(path)
    assert back["image_id"].tolist() == df["image_id"].tolist()
    assert str(back["mass"].dtype) == "Int64" and back["mass"].sum() == 6
    assert list(back.columns[:8]) == ["image_id", "patient_id", "study_id", "laterality", "view", "path",
                                      "split", "source"]


def test_problems_name_row_and_column():
    df = _rows()
    df.loc[4, "laterality"] = "X"
    df.loc[7, "density"] = "E"
    df.loc[2, "mass"] = 3
    df.loc[9, "image_id"] = df.loc[8, "image_id"]
    problems = {(p.row, p.column) for p in validate_manifest(df)}
    assert {(4, "laterality"), (7, "density"), (2, "mass"), (9, "image_id")} <= problems


def test_missing_column_and_patient_leak_are_reported(tmp_path):
    df = _rows().drop(columns=["view"])
    assert [str(p) for p in validate_manifest(df)] == ["column 'view': required column is missing"]
    leak = _rows()
    leak.loc[0, "split"] = "test"  # patient p0 now in train and test
    problems = validate_manifest(leak)
    assert any(p.column == "split" and "p0" in p.message for p in problems)
    write_manifest(leak, tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"(?s)m\.csv.*row 0, column 'split'"):
        read_manifest(tmp_path / "m.csv")


def test_missing_files_are_reported(tmp_path):
    df = _rows(1)
    (tmp_path / "images").mkdir()
    (tmp_path / df.loc[0, "path"]).write_bytes(b"x")
    problems = validate_manifest(df, check_files=True, root=tmp_path)
    assert sorted(p.row for p in problems) == [1, 2, 3]
    assert all("file not found" in p.message for p in problems)


def test_splits_are_patient_level_deterministic_and_stable():
    ids = [f"patient{i}" for i in range(2000)]
    a = assign_patient_splits(ids, (0.7, 0.1, 0.2), seed=3)
    b = assign_patient_splits(list(reversed(ids)) + ids[:10], (0.7, 0.1, 0.2), seed=3)
    assert a == b  # order and duplicates do not matter
    shares = pd.Series(a).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.04 and abs(shares["val"] - 0.1) < 0.03
    more = assign_patient_splits(ids + [f"new{i}" for i in range(100)], (0.7, 0.1, 0.2), seed=3)
    assert all(more[i] == a[i] for i in ids)  # adding patients moves nobody
    assert assign_patient_splits(ids, (0.7, 0.1, 0.2), seed=4) != a
    with pytest.raises(ValueError):
        assign_patient_splits(ids, (0.5, 0.1, 0.1))


def test_bundle_split_and_boxes(tmp_path):
    df = _rows()
    boxes = pd.DataFrame([dict(image_id="p0_L_CC", label="mass", xmin=1, ymin=2, xmax=5, ymax=9, space="processed"),
                          dict(image_id="p2_L_CC", label="mass", xmin=1, ymin=2, xmax=5, ymax=9, space="processed")])
    Bundle(df, boxes=boxes, root=tmp_path).save(tmp_path)
    bundle = load_bundle(tmp_path)
    test = bundle.split("test")
    assert set(test.images["patient_id"]) == {"p2"} and test.boxes["image_id"].tolist() == ["p2_L_CC"]
    assert bundle.abspath("images/x.png") == tmp_path / "images/x.png"
    assert breast_key(test.images).nunique() == 2


def test_bad_boxes_are_refused(tmp_path):
    bad = pd.DataFrame([dict(image_id="a", label="mass", xmin=5, ymin=2, xmax=1, ymax=9, space="processed")])
    write_boxes(bad, tmp_path / "boxes.csv")
    with pytest.raises(DataError, match="row 0"):
        read_boxes(tmp_path / "boxes.csv")
