"""Detection targets: boxes follow preprocessing, resizing and augmentation; clipping and bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import PreprocessOptions, preprocess
from mammoclip.data.transforms import RandomAffine, RandomFlip
from mammoclip.detect.config import DetectorCfg, class_labels
from mammoclip.detect.data import (
    DetectionDataset,
    affine_boxes,
    augment_with_boxes,
    clip_boxes,
    flip_boxes,
    gather_boxes,
    scale_boxes,
)
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.breast import TransformRecord


def _mask_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def _rect_image(shape=(120, 80), box=(20, 30, 45, 70)) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img, np.array([box], dtype=np.float64)


def test_flip_moves_boxes_exactly():
    img, box = _rect_image()
    out, moved = augment_with_boxes(img, box, [RandomFlip(1.0, 1.0)], np.random.default_rng(0))
    np.testing.assert_array_equal(moved[0], _mask_box(out > 127))
    np.testing.assert_array_equal(flip_boxes(moved, 80, 120, True, True), box)  # flipping twice is identity


def test_affine_without_rotation_moves_boxes_to_the_pixels():
    img, box = _rect_image()
    t = RandomAffine(rotate=0, translate=0.1, scale=(1.15, 1.15), shear=0, p=1.0)
    for seed in range(5):
        out, moved = augment_with_boxes(img, box, [t], np.random.default_rng(seed))
        np.testing.assert_allclose(moved[0], _mask_box(out > 127), atol=1.0)


def test_affine_with_rotation_box_contains_the_lesion_tightly():
    img, box = _rect_image()
    t = RandomAffine(rotate=10, translate=0.05, scale=(0.9, 1.1), shear=5, p=1.0)
    for seed in range(5):
        out, moved = augment_with_boxes(img, box, [t], np.random.default_rng(seed))
        pixels = _mask_box(out > 127)
        assert (moved[0, :2] <= pixels[:2] + 1).all() and (moved[0, 2:] >= pixels[2:] - 1).all()
        area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
        assert area(moved[0]) < 1.6 * area(pixels)


def test_affine_identity_matrix_keeps_boxes():
    box = np.array([[3.0, 4.0, 10.0, 12.0]])
    np.testing.assert_allclose(affine_boxes(box, np.array([[1.0, 0, 0], [0, 1.0, 0]])), box)


def test_clip_and_drop_degenerate():
    boxes = np.array([[-5, 10, 20, 30], [10, 10, 20, 30], [70, 10, 90, 30], [79.5, 5, 100, 9]])
    kept, keep, changed = clip_boxes(boxes, 120, 80)
    assert keep.tolist() == [True, True, True, False]  # the last keeps 0.5 px of width
    np.testing.assert_array_equal(kept[0], [0, 10, 20, 30])
    np.testing.assert_array_equal(kept[2], [70, 10, 80, 30])
    assert changed == 3


def test_gather_boxes_clips_drops_and_logs(synthetic_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = tmp_path / "c"
    shutil.copytree(synthetic_cohort.parent, folder)
    bundle = load_bundle(folder)
    iid = str(bundle.images["image_id"].iloc[0])
    extra = pd.DataFrame([{"image_id": iid, "label": "mass", "xmin": 150.0, "ymin": 10.0, "xmax": 190.0, "ymax": 40.0,
                           "space": "processed"},
                          {"image_id": iid, "label": "mass", "xmin": 170.0, "ymin": 10.0, "xmax": 190.0, "ymax": 40.0,
                           "space": "processed"}])
    bundle.boxes = pd.concat([bundle.boxes, extra], ignore_index=True)
    n_mass = int(bundle.boxes["label"].isin(class_labels("mass")).sum())
    with caplog.at_level(logging.WARNING, logger="mammoclip.detect.data"):
        targets, stats = gather_boxes(bundle, ["mass"])
    assert stats.kept == n_mass - 1 and stats.dropped_degenerate == 1 and stats.clipped >= 2
    assert "1 degenerate box(es) dropped" in caplog.text
    boxes, labels = targets[iid]
    assert boxes[:, 2].max() <= 160 and (labels == 0).all()  # width of the 256x160 images
    assert len(targets) == len(bundle.images)  # normal images are there too, with no boxes
    # the same rows gathered again (a training run's validation, every epoch) are not logged again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mammoclip.detect.data"):
        again, _ = gather_boxes(bundle, ["mass"])
    assert "clipped to the image" not in caplog.text and np.array_equal(again[iid][0], boxes)


def test_multiclass_labels_index_the_class_list(synthetic_cohort: Path):
    bundle = load_bundle(synthetic_cohort)
    targets, stats = gather_boxes(bundle, ["calcification", "mass"])
    labels = np.concatenate([lab for _, lab in targets.values()])
    assert set(labels.tolist()) == {0, 1}
    assert stats.per_class["mass"] == int((bundle.boxes["label"] == "mass").sum())
    assert stats.per_class["calcification"] == int((bundle.boxes["label"] == "calcification").sum())


def test_unknown_class_and_missing_boxes_are_one_line_errors(synthetic_cohort: Path):
    with pytest.raises(ConfigError, match=r"unknown detection class 'tumour'; known: \['calcification', 'mass'\]"):
        DetectorCfg(classes=["tumour"])
    bundle = load_bundle(synthetic_cohort)
    bundle.boxes = bundle.boxes[bundle.boxes["label"] != "mass"].reset_index(drop=True)
    with pytest.raises(DataError, match=r"boxes\.csv: no boxes for class 'mass'") as err:
        gather_boxes(bundle, ["mass"])
    assert "\n" not in str(err.value)


def test_dataset_scales_boxes_to_the_input_size(synthetic_cohort: Path):
    bundle = load_bundle(synthetic_cohort)
    targets, _ = gather_boxes(bundle, ["mass"])
    row = next(i for i, iid in enumerate(bundle.images["image_id"]) if len(targets[iid][0]))
    item = DetectionDataset(bundle, targets, (128, 128))[row]
    assert tuple(item["image"].shape) == (1, 128, 128) and item["orig_size"] == (256, 160)
    expected = scale_boxes(targets[bundle.images["image_id"][row]][0], 128 / 160, 128 / 256)
    np.testing.assert_allclose(item["boxes"].numpy(), expected, rtol=1e-6)


def test_box_round_trip_original_to_input_and_back(make_cohort):
    """Original DICOM box -> preprocess (record) -> input size -> flip -> un-flip -> original again."""
    dicoms = make_cohort(n_patients=2, size=(320, 200), fmt="dicom", prevalence={"mass": 1.0})
    prep = preprocess(dicoms, dicoms.parent.parent / "prep", PreprocessOptions(size=(192, 112), flip_to="left"),
                      workers=1, isolate=False)
    source, processed = load_bundle(dicoms), load_bundle(prep.manifest)
    targets, _ = gather_boxes(processed, ["mass"])
    original = source.boxes[source.boxes["label"] == "mass"]
    assert (original["space"] == "original").all() and len(original)
    checked = 0
    for iid, group in original.groupby("image_id"):
        row = processed.images[processed.images["image_id"] == iid].iloc[0]
        rec = TransformRecord.from_row(row)
        orig = group[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=float)
        np.testing.assert_allclose(np.sort(targets[iid][0], axis=0), np.sort(rec.map_boxes(orig), axis=0), atol=1e-6)
        inp = scale_boxes(targets[iid][0], 96 / 112, 96 / 192)
        back = flip_boxes(flip_boxes(inp, 96, 96, True, False), 96, 96, True, False)
        restored = rec.map_boxes(scale_boxes(back, 112 / 96, 192 / 96), inverse=True)
        np.testing.assert_allclose(np.sort(restored, axis=0), np.sort(rec.map_boxes(rec.map_boxes(orig), inverse=True),
                                                                      axis=0), atol=1e-6)
        checked += 1
    assert checked >= 2
    # Original-space boxes in a preprocessed manifest are mapped through the record by gather_boxes too.
    mixed = load_bundle(prep.manifest)
    mixed.boxes = original.reset_index(drop=True)
    again, _ = gather_boxes(mixed, ["mass"])
    for iid in original["image_id"].unique():
        np.testing.assert_allclose(np.sort(again[iid][0], axis=0), np.sort(targets[iid][0], axis=0), atol=1e-6)


def test_original_boxes_without_a_record_fail(synthetic_cohort: Path):
    bundle = load_bundle(synthetic_cohort)
    bundle.boxes = bundle.boxes.assign(space="original")
    with pytest.raises(DataError, match="no transform record"):
        gather_boxes(bundle, ["mass"])
