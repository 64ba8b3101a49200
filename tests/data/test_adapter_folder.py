"""Folder adapter on any export layout: grouping by DICOM tags, reports by study, a labels CSV joined
by file name / SOPInstanceUID / path, and robustness (special files, hostile headers, id collisions)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.adapters import build_bundle, get_adapter
from mammoclip.data.adapters.folder import join_labels
from mammoclip.data.manifest import LEFT_OUT_FILE, load_bundle, validate_manifest
from mammoclip.errors import ConfigError, DataError
from tests.imaging.dicom_factory import phantom, write_dicom

IMAGE = phantom((32, 24), lesion=None)


def mg(path: Path, patient: str | None, study: str, lat: str = "L", view: str = "CC", *, series: str = "",
       sop: str | None = None, accession: str = "") -> Path:
    """One small MG DICOM with the given header UIDs (the factory draws fresh ones otherwise)."""
    import pydicom

    write_dicom(path, IMAGE, bits=12, laterality=lat, view=view, patient_id=patient or "x")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or f"{study}.1"
    if sop:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    if accession:
        ds.AccessionNumber = accession
    if patient is None:
        del ds.PatientID
    ds.save_as(path, enforce_file_format=True)
    return path


VIEWS4 = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


def flat_export(root: Path) -> Path:
    """Three patients: A flat with opaque names and no suffix, B nested two levels, C without report."""
    for i, (lat, view) in enumerate(VIEWS4):
        mg(root / f"IMG{i:04d}", "A", "1.2.3.1", lat, view, sop=f"1.2.3.1.{i}", accession="ACC1")
        mg(root / "sub" / "deeper" / f"b_{i}.dcm", "B", "1.2.3.2", lat, view, sop=f"1.2.3.2.{i}")
    mg(root / "c" / "x1.dcm", "C", "1.2.3.3", "L", "CC", sop="1.2.3.3.0")
    mg(root / "c" / "x2.dcm", "C", "1.2.3.3", "R", "CC", sop="1.2.3.3.1", series="1.2.3.3.9")
    (root / "reports").mkdir()
    (root / "reports" / "ACC1.txt").write_text("FINDINGS: Spiculated mass left breast.\nIMPRESSION: BI-RADS 5.\n")
    (root / "sub" / "deeper" / "report.txt").write_text("FINDINGS: No suspicious finding.\nIMPRESSION: BI-RADS 1.\n")
    (root / "README.md").write_text("not a DICOM, not a report")
    return root


def test_flat_and_nested_export_grouped_by_tags(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = flat_export(tmp_path / "export")
    assert get_adapter("folder").detect(root)
    with caplog.at_level(logging.WARNING):
        bundle = build_bundle(root)
    assert not validate_manifest(bundle.images)
    img = bundle.images.set_index("image_id")
    assert len(img) == 10 and bundle.images.attrs["skipped"] == []
    assert list(img.index[:4]) == ["IMG0000", "IMG0001", "IMG0002", "IMG0003"]
    assert img.loc["sub/deeper/b_2", "path"] == "sub/deeper/b_2.dcm"
    assert (img.loc["IMG0003", "laterality"], img.loc["IMG0003", "view"]) == ("R", "MLO")
    groups = img.groupby("patient_id")["study_id"].unique().map(list).to_dict()
    assert groups == {"A": ["1.2.3.1"], "B": ["1.2.3.2"], "C": ["1.2.3.3"]}
    assert sorted(img.loc[img["patient_id"] == "C", "series_id"]) == ["1.2.3.3.1", "1.2.3.3.9"]
    assert img.groupby("patient_id")["split"].nunique().max() == 1
    # reports: by accession number (A), by the folder's report.txt (B), none for C (one line)
    assert img.loc["IMG0001", "report_id"] == "1.2.3.1" and img.loc["sub/deeper/b_0", "report_id"] == "1.2.3.2"
    assert img.loc[img["patient_id"] == "C", "report_id"].isna().all()
    reports = bundle.reports.set_index("report_id")
    assert sorted(reports.index) == ["1.2.3.1", "1.2.3.2"]
    assert "spiculated mass" in reports.loc["1.2.3.1", "findings"].lower()
    lines = [r.getMessage() for r in caplog.records if "have no report" in r.getMessage()]
    assert lines == [lines[0]] and lines[0].startswith("folder: 1 of 3 studies have no report")


def test_report_txt_shared_by_several_studies_is_not_guessed(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    mg(root / "a.dcm", "P", "1.1")
    mg(root / "b.dcm", "P", "1.2", "R")
    (root / "report.txt").write_text("FINDINGS: mass.\n")
    (root / "1.2.txt").write_text("FINDINGS: calcifications.\n")
    bundle = build_bundle(root, adapter="folder")
    img = bundle.images.set_index("image_id")
    assert pd.isna(img.loc["a", "report_id"]) and img.loc["b", "report_id"] == "1.2"
    assert list(bundle.reports["text"]) == ["FINDINGS: calcifications.\n"]


def test_labels_csv_end_to_end_through_the_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = flat_export(tmp_path / "export")
    labels = pd.DataFrame({
        "file": ["IMG0000", "IMG0001", "b_0.dcm", "b_3.dcm", "x1.dcm", "ghost.dcm"],
        "Mass": [1, 0, "yes", "no", "", 1],
        "Suspicious Calcification": ["0", "1", "0", "0", "1", "0"],
        "density": ["C", "DENSITY d", "b", "", "A", "B"],
        "BIRADS": ["BI-RADS 5", "4a", "1", "2", "", "3"],
        "age": [61, 61, 50, 50, 70, 40],
    })
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with caplog.at_level(logging.WARNING):
        assert main(["manifest", "build", str(root), "--labels", str(tmp_path / "labels.csv"),
                     "--out", str(tmp_path / "m")]) == 0
    assert "labels: density 4, birads 4, mass 4, calcification 5" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records]
    assert any("1 column(s) are not manifest labels and are ignored: ['age']" in w for w in warnings)
    assert any("1 of 6 label row(s) match no image (e.g. ['ghost.dcm']); 5 of 10 image(s) have no label row" in w
               for w in warnings)
    assert main(["manifest", "validate", str(tmp_path / "m"), "--check-files"]) == 0
    out = load_bundle(tmp_path / "m", check_files=True)
    img = out.images.set_index("image_id")
    got = img.loc[["IMG0000", "IMG0001", "sub/deeper/b_0", "sub/deeper/b_3", "c/x1"],
                  ["mass", "calcification", "density", "birads"]]
    assert got["mass"].tolist() == [1, 0, 1, 0, pd.NA]
    assert got["calcification"].tolist() == [0, 1, 0, 0, 1]
    assert got["density"].tolist() == ["C", "D", "B", pd.NA, "A"]
    assert got["birads"].tolist() == [5, 4, 1, 2, pd.NA]
    assert img.loc["IMG0002", ["mass", "calcification", "density", "birads"]].isna().all()
    assert "age" not in img.columns and img.loc["c/x2", "patient_id"] == "C"
    assert str(img["mass"].dtype) == "Int64"


def test_labels_key_kinds_and_refusals(tmp_path: Path) -> None:
    root = flat_export(tmp_path / "export")
    bundle = build_bundle(root)
    n = len(bundle.images)
    # SOPInstanceUID, detected among several non-label columns
    pd.DataFrame({"note": ["a", "b"], "uid": ["1.2.3.2.1", "1.2.3.3.1"], "cancer": [1, 0]}).to_csv(
        tmp_path / "sop.csv", index=False)
    bundle = get_adapter("folder").load(root, labels=tmp_path / "sop.csv")
    img = bundle.images.set_index("image_id")
    assert img["malignant"].sum() == 1 and img.loc["sub/deeper/b_1", "malignant"] == 1
    assert img.loc["c/x2", "malignant"] == 0 and img["malignant"].notna().sum() == 2 and len(img) == n
    # relative paths
    pd.DataFrame({"path": ["c/x1.dcm", "IMG0003"], "mass": [1, 1]}).to_csv(tmp_path / "p.csv", index=False)
    img = get_adapter("folder").load(root, labels=tmp_path / "p.csv").images.set_index("image_id")
    assert img["mass"].sum() == 2 and img.loc["c/x1", "mass"] == 1
    # two columns matching equally: refused, then chosen with labels_key
    pd.DataFrame({"a": ["IMG0000"], "b": ["IMG0001"], "mass": [1]}).to_csv(tmp_path / "amb.csv", index=False)
    with pytest.raises(ConfigError, match="columns 'b' and 'a' both match 1 images; choose the key"):
        get_adapter("folder").load(root, labels=tmp_path / "amb.csv")
    img = get_adapter("folder").load(root, labels=tmp_path / "amb.csv", labels_key="b").images
    assert img.set_index("image_id").loc["IMG0001", "mass"] == 1 and img["mass"].notna().sum() == 1
    with pytest.raises(ConfigError, match="'zz' is not a column"):
        get_adapter("folder").load(root, labels=tmp_path / "amb.csv", labels_key="zz")
    # duplicated keys, bad values, no match, no label column: one line each
    cases = {
        "dup": ({"f": ["IMG0000", "IMG0000"], "mass": [1, 0]}, "key 'IMG0000' in column 'f' appears 2 times"),
        "bad": ({"f": ["IMG0000", "IMG0001"], "mass": [1, 2]}, r"column 'mass' \(mass\): 1 value\(s\) not in 0/1.*row 1: '2'"),
        "birads": ({"f": ["IMG0000"], "birads": ["7"]}, r"'birads' \(birads\): 1 value\(s\) not in 0-6"),
        "nomatch": ({"f": ["nope"], "mass": [1]}, "no value of \\['f'\\] matches"),
        "nolabel": ({"f": ["IMG0000"], "age": [3]}, "no label column"),
    }
    for name, (table, message) in cases.items():
        pd.DataFrame(table).to_csv(tmp_path / f"{name}.csv", index=False)
        with pytest.raises(DataError, match=message):
            get_adapter("folder").load(root, labels=tmp_path / f"{name}.csv")
    # a file name shared by two folders cannot key labels
    mg(root / "other" / "x1.dcm", "D", "1.2.3.4")
    pd.DataFrame({"f": ["x1.dcm"], "mass": [1]}).to_csv(tmp_path / "shared.csv", index=False)
    with pytest.raises(DataError, match="file name 'x1.dcm' names 2 images"):
        get_adapter("folder").load(root, labels=tmp_path / "shared.csv")


def test_labels_options_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = flat_export(tmp_path / "export")
    pd.DataFrame({"f": ["IMG0000"], "mass": [5]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["manifest", "build", str(root), "--labels", str(tmp_path / "bad.csv"), "--out",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "column 'mass' (mass): 1 value(s) not in 0/1" in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert main(["manifest", "build", str(root), "--adapter", "vindr", "--labels", str(tmp_path / "bad.csv"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "--labels works only with --adapter folder" in capsys.readouterr().err
    assert main(["manifest", "build", str(root), "--labels-key", "f", "--out", str(tmp_path / "m")]) == 2
    assert "--labels-key needs --labels" in capsys.readouterr().err


def test_old_layout_ids_unchanged_and_colliding_ids_made_unique(tmp_path: Path) -> None:
    root = tmp_path / "export"
    mg(root / "P_1" / "S" / "x.dcm", "P_1", "9.1")
    mg(root / "P" / "1_S" / "x.dcm", "P", "9.2")
    mg(root / "Q" / "S" / "LCC.dcm", "Q", "9.3")
    mg(root / "Q" / "S" / "y~1.dcm", "Q", "9.3", "R")
    bundle = build_bundle(root)
    ids = bundle.images.set_index("path")["image_id"].to_dict()
    assert len(set(ids.values())) == 4
    assert ids[str(Path("Q/S/LCC.dcm"))] == "Q_S_LCC"  # the classic id, kept
    a, b = ids[str(Path("P_1/S/x.dcm"))], ids[str(Path("P/1_S/x.dcm"))]
    assert a != b and a.startswith("P_1_S_x~") and b.startswith("P_1_S_x~") and len(a) == len("P_1_S_x~") + 10
    assert ids[str(Path("Q/S/y~1.dcm"))].startswith("Q_S_y~1~")  # the mark never appears in a plain id
    # the same rule in tags mode: "x" and "x.dcm" side by side
    flat = tmp_path / "flat"
    mg(flat / "x", "P", "1.1")
    mg(flat / "x.dcm", "P", "1.1", "R")
    ids = build_bundle(flat).images["image_id"].tolist()
    assert len(set(ids)) == 2 and all(i.startswith("x~") for i in ids)


class FakePanic(BaseException):
    """Like pyo3's PanicException: derives from BaseException, not Exception."""


def test_special_files_and_hostile_headers_leave_one_file_out(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    import pydicom

    import mammoclip.data.adapters.folder as folder

    root = tmp_path / "export"
    for lat, view in VIEWS4:
        mg(root / "p" / "s" / f"{lat}{view}.dcm", "p", "1.1", lat, view)
    os.mkfifo(root / "p" / "s" / "pipe.dcm")  # would block open() forever
    multi = mg(root / "p" / "s" / "multi.dcm", "p", "1.1")
    ds = pydicom.dcmread(multi)
    ds.Rows = [32, 33]  # multi-valued Rows: int() raises TypeError, not DataError
    ds.save_as(multi, enforce_file_format=True)
    mg(root / "p" / "s" / "struct.dcm", "p", "1.1")
    mg(root / "p" / "s" / "panic.dcm", "p", "1.1")
    (root / "p" / "s" / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(64))
    real = folder.read_dicom_header

    def hostile(path: Path, **kw: object) -> object:
        if path.name == "struct.dcm":
            raise struct.error("unpack_from requires a buffer of at least 131070 bytes")
        if path.name == "panic.dcm":
            raise FakePanic("decoder panicked\nat src/lib.rs:1")
        return real(path, **kw)

    monkeypatch.setattr(folder, "read_dicom_header", hostile)
    done: dict[str, object] = {}
    worker = threading.Thread(target=lambda: done.update(bundle=build_bundle(root)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the adapter hangs on a FIFO named *.dcm"
    bundle = done["bundle"]
    assert sorted(bundle.images["image_id"]) == ["p_s_LCC", "p_s_LMLO", "p_s_RCC", "p_s_RMLO"]
    reasons = dict(bundle.images.attrs["skipped"])
    assert sorted(Path(f).name for f in reasons) == ["junk.dcm", "multi.dcm", "panic.dcm", "pipe.dcm",
                                                     "struct.dcm"]
    by_name = {Path(f).name: r for f, r in reasons.items()}
    assert "a FIFO, not a regular file" in by_name["pipe.dcm"]
    assert "cannot read DICOM header (error: unpack_from requires" in by_name["struct.dcm"]
    assert "(FakePanic: decoder panicked at src/lib.rs:1)" in by_name["panic.dcm"]
    assert by_name["multi.dcm"].startswith(f"{multi}: ")  # Rows [32, 33]: named, whatever raised it
    assert all("\n" not in r for r in reasons.values())

    def interrupted(path: Path, **kw: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(folder, "read_dicom_header", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(root)


def test_left_out_list_saved_beside_the_manifest_and_reaches_failures_csv(tmp_path: Path) -> None:
    root = tmp_path / "export"
    for lat, view in VIEWS4:
        mg(root / "p" / "s" / f"{lat}{view}.dcm", "p", "1.1", lat, view)
    write_dicom(root / "p" / "s" / "scout.dcm", np.zeros((8, 8), np.uint16), modality="CT")
    assert main(["manifest", "build", str(root), "--out", str(tmp_path / "m")]) == 0
    left_out = pd.read_csv(tmp_path / "m" / LEFT_OUT_FILE)
    assert list(left_out.columns) == ["file", "reason"] and left_out["file"][0].endswith("scout.dcm")
    again = load_bundle(tmp_path / "m")
    assert again.images.attrs["skipped"] == [(left_out["file"][0], left_out["reason"][0])]
    assert main(["preprocess", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--size", "32x24",
                 "--workers", "1"]) == 0
    failures = pd.read_csv(tmp_path / "o" / "failures.csv")
    assert len(failures) == 1 and failures["file"][0].endswith("scout.dcm") and "CT" in failures["reason"][0]
    # a rebuild without left-out files removes the stale list
    (root / "p" / "s" / "scout.dcm").unlink()
    assert main(["manifest", "build", str(root), "--out", str(tmp_path / "m")]) == 0
    assert not (tmp_path / "m" / LEFT_OUT_FILE).exists()
    assert "skipped" not in load_bundle(tmp_path / "m").images.attrs


def test_group_by_option(tmp_path: Path) -> None:
    root = tmp_path / "export"
    mg(root / "p1" / "s1" / "a.dcm", "PAT", "7.1")
    mg(root / "p1" / "s2" / "b.dcm", "PAT", "7.1", "R")
    by_folders = build_bundle(root)
    assert sorted(by_folders.images["study_id"]) == ["s1", "s2"] and set(by_folders.images["patient_id"]) == {"p1"}
    by_tags = get_adapter("folder").load(root, group_by="tags")
    assert set(by_tags.images["study_id"]) == {"7.1"} and set(by_tags.images["patient_id"]) == {"PAT"}
    assert sorted(by_tags.images["image_id"]) == ["p1/s1/a", "p1/s2/b"]
    with pytest.raises(ConfigError, match="group_by must be one of"):
        get_adapter("folder").load(root, group_by="nope")
    # no PatientID: the study stands for its patient
    mg(tmp_path / "anon" / "z.dcm", None, "8.1")
    assert build_bundle(tmp_path / "anon").images["patient_id"].tolist() == ["study:8.1"]


def test_join_labels_needs_the_csv(tmp_path: Path) -> None:
    bundle = build_bundle(flat_export(tmp_path / "export"))
    with pytest.raises(DataError, match="file not found"):
        join_labels(bundle.images, tmp_path / "missing.csv")
    # on a built manifest (no header UIDs kept): keyed by image id
    pd.DataFrame({"id": ["c/x1", "IMG0002"], "malignant": [1, 0]}).to_csv(tmp_path / "l.csv", index=False)
    img = join_labels(bundle.images, tmp_path / "l.csv").set_index("image_id")
    assert img["malignant"].dropna().to_dict() == {"c/x1": 1, "IMG0002": 0} and img["malignant"].isna().sum() == 8
