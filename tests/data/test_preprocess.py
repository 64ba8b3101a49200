"""The batch pipeline: DICOM manifest -> PNGs + manifest with transform record; failures, resume, shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.manifest import Bundle, load_bundle, read_boxes
from mammoclip.data.preprocess import PreprocessOptions, merge_shards, preprocess
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.breast import TransformRecord
from mammoclip.imaging.imageio import read_image, write_png
from tests.imaging.dicom_factory import phantom, write_dicom

SIZE = (96, 64)
LESION = (200, 90, 14)  # row, col, radius in a left-facing (400, 256) phantom


def make_source(root: Path, n: int = 4, *, bad: bool = False) -> Path:
    """A DICOM manifest of ``n`` phantoms (half right-facing), one box and one mask per image."""
    rows, boxes = [], []
    for i in range(n):
        side = "left" if i % 2 == 0 else "right"
        img = phantom((400, 256), side=side, seed=i, lesion=LESION)
        write_dicom(root / "dicom" / f"im{i}.dcm", img, bits=12, laterality="L" if side == "left" else "R")
        r, c, rad = LESION
        c = c if side == "left" else 256 - c
        mask = np.zeros((400, 256), np.uint8)
        yy, xx = np.mgrid[0:400, 0:256]
        mask[(yy - r) ** 2 + (xx - c) ** 2 <= rad**2] = 255
        write_png(root / "masks" / f"im{i}.png", mask)
        rows.append({"image_id": f"im{i}", "patient_id": f"p{i // 2}", "study_id": f"s{i // 2}",
                     "laterality": "L" if side == "left" else "R", "view": "CC", "path": f"dicom/im{i}.dcm",
                     "split": "train", "source": "test"})
        boxes.append({"image_id": f"im{i}", "label": "mass", "xmin": c - rad, "ymin": r - rad, "xmax": c + rad + 1,
                      "ymax": r + rad + 1, "space": "original", "mask_path": f"masks/im{i}.png", "finding_id": f"f{i}"})
    if bad:
        (root / "dicom" / "junk.dcm").write_text("not a dicom")
        rows.append({**rows[0], "image_id": "junk", "path": "dicom/junk.dcm"})
        rows.append({**rows[0], "image_id": "gone", "path": "dicom/missing.dcm"})
    Bundle(pd.DataFrame(rows), pd.DataFrame(boxes), root=root).save(root)
    return root / "manifest.csv"


def test_preprocess_writes_manifest_boxes_masks(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", bad=True)
    result = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE, window="minmax"))
    assert (result.processed, result.failed) == (4, 2)
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures.columns) == ["file", "code", "reason"]
    assert sorted(failures["code"]) == ["MISSING_FILE", "NOT_DICOM"]
    assert any("not a DICOM file" in r for r in failures["reason"]) and any("file not found" in r for r in failures["reason"])
    out = load_bundle(tmp_path / "out", check_files=True)
    assert len(out.images) == 4 and set(out.boxes["space"]) == {"processed"}
    for row in out.images.itertuples():
        img = read_image(out.abspath(row.path))
        assert img.shape == SIZE and img.dtype == np.uint8
        record = TransformRecord.from_row(row._asdict())
        assert record.flipped == (row.laterality == "R")  # right-facing phantoms are mirrored
        box = out.boxes[out.boxes["image_id"] == row.image_id].iloc[0]
        mask = read_image(out.abspath(box["mask_path"])) > 0
        ys, xs = np.nonzero(mask)
        # the mapped mask and the mapped box agree (within a processed pixel)
        assert abs(xs.min() - box["xmin"]) <= 1.5 and abs(xs.max() + 1 - box["xmax"]) <= 1.5
        assert abs(ys.min() - box["ymin"]) <= 1.5 and abs(ys.max() + 1 - box["ymax"]) <= 1.5
        # the box stays on the lesion: the mean inside the mapped box matches the source's box mean
        i = int(row.image_id[2:])
        source = phantom((400, 256), side="left" if i % 2 == 0 else "right", seed=i, lesion=LESION)
        # whole processed pixels inside the box, and the same region pulled back to the source
        px = np.array([np.ceil(box["xmin"]), np.ceil(box["ymin"]), np.floor(box["xmax"]), np.floor(box["ymax"])])
        x0, y0, x1, y1 = record.map_boxes(px, inverse=True)[0].round().astype(int)
        expected = source[y0:y1, x0:x1].mean() * 255 / 4095  # minmax window: 0..4095 in the crop
        got = img[int(px[1]):int(px[3]), int(px[0]):int(px[2])].mean()
        assert abs(got - expected) < 0.1 * expected
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["processed"] == 4 and summary["failed"] == 2


def test_resume_skips_up_to_date_and_redoes_changed(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=2)
    opts = PreprocessOptions(size=SIZE)
    preprocess(src, tmp_path / "out", opts)
    again = preprocess(src, tmp_path / "out", opts)
    assert (again.processed, again.skipped) == (0, 2)
    dcm = tmp_path / "src" / "dicom" / "im0.dcm"
    st = dcm.stat()
    os.utime(dcm, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = preprocess(src, tmp_path / "out", opts)
    assert (third.processed, third.skipped) == (1, 1)
    other = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE, bits=16))
    assert other.processed == 2  # different options: nothing reused
    assert read_image(tmp_path / "out" / load_bundle(tmp_path / "out").images["path"][0]).dtype == np.uint16


def test_shards_and_merge_equal_single_run(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=4)
    opts = PreprocessOptions(size=SIZE)
    preprocess(src, tmp_path / "single", opts)
    for i in range(2):
        preprocess(src, tmp_path / "sharded", opts, shard=(i, 2))
    assert (tmp_path / "sharded" / "manifest.part-1.csv").exists()
    merge_shards(tmp_path / "sharded")
    a = load_bundle(tmp_path / "single").images.sort_values("image_id").reset_index(drop=True)
    b = load_bundle(tmp_path / "sharded").images.sort_values("image_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["image_id", "crop_x0", "crop_x1", "path"]].astype(str),
                                  b[["image_id", "crop_x0", "crop_x1", "path"]].astype(str))
    assert len(read_boxes(tmp_path / "sharded" / "boxes.csv")) == 4
    summary = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert (summary["processed"], summary["failed"], summary["shards"]) == (4, 0, 2)


def test_merge_refuses_while_a_shard_is_missing(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=3)
    for i in (0, 2):
        preprocess(src, tmp_path / "sharded", PreprocessOptions(size=SIZE), shard=(i, 3))
    with pytest.raises(DataError, match=r"shard\(s\) 1/3 not finished"):
        merge_shards(tmp_path / "sharded")
    assert not (tmp_path / "sharded" / "manifest.csv").exists()
    preprocess(src, tmp_path / "sharded", PreprocessOptions(size=SIZE), shard=(1, 3))
    assert len(load_bundle(merge_shards(tmp_path / "sharded")).images) == 3
    preprocess(src, tmp_path / "sharded", PreprocessOptions(size=SIZE), shard=(3, 4))  # another run's part
    with pytest.raises(DataError, match="disagree on the number of shards"):
        merge_shards(tmp_path / "sharded")


def test_two_workers(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=4)
    result = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=2)
    assert result.processed == 4 and result.failed == 0


def test_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    Bundle(pd.DataFrame(columns=["image_id", "patient_id", "study_id", "laterality", "view", "path", "split",
                                 "source"]), root=empty).save(empty)
    with pytest.raises(DataError, match="no images"):
        preprocess(empty, tmp_path / "out")
    with pytest.raises(DataError, match="input not found"):
        preprocess(tmp_path / "nothing", tmp_path / "out")
    src = make_source(tmp_path / "src", n=1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="not writable"):
        preprocess(src, blocker / "out")
    with pytest.raises(ConfigError):
        PreprocessOptions(resize="crop")


def test_cli_preprocess_and_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src", n=2)
    for i in range(2):
        assert main(["preprocess", str(src), "--out", str(tmp_path / "o"), "--size", "64x48", "--shard", f"{i}/2",
                     "--resize", "pad", "--bits", "16", "--window", "percentile"]) == 0
    assert main(["preprocess-merge", str(tmp_path / "o")]) == 0
    out = load_bundle(tmp_path / "o")
    assert len(out.images) == 2 and (out.images["height"] == 64).all()
    assert "processed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # checked by the option type (cli/_options.py)
        main(["preprocess", str(src), "--out", str(tmp_path / "o2"), "--size", "big"])
    assert exit_.value.code == 2
