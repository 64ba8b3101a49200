"""Weak-localization metrics against hand-computed cases; truth boxes and masks from a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.attribution import AttributeSpec, box_iou, breast_prior_map, localize_one, summarize
from mammoclip.attribution.localization import scored_rows, truth_for
from mammoclip.data.manifest import Bundle
from mammoclip.errors import DataError
from mammoclip.imaging.imageio import write_png

MASS = AttributeSpec("mass", "mass", ("mass",))


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 40]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [100, 100, 101, 101]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(50 / 150) and iou[0, 1] == 1.0 and iou[0, 2] == 0.0
    assert iou[1].max() == 0.0
    assert box_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 0.0  # empty boxes: no NaN


def _blob(top: int, left: int) -> np.ndarray:
    heat = np.zeros((40, 50), np.float32)  # 2000 px: a 10 x 10 blob is the top 5 %
    heat[top:top + 10, left:left + 10] = 0.5
    heat[top + 4, left + 6] = 1.0
    return heat


def test_localize_one_exact_hit() -> None:
    heat = _blob(10, 20)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 20:25] = True  # the left half of the blob, which holds the peak? no: the peak is at x = 26
    m = localize_one(heat, np.array([[20, 10, 30, 20]]), mask)
    assert m["iou"] == 1.0 and m["hit@0.25"] == 1.0 and m["hit@0.5"] == 1.0 and m["pointing"] == 1.0
    assert m["energy"] == pytest.approx((50 * 0.5) / (99 * 0.5 + 1.0))


def test_localize_one_partial_overlap_and_miss() -> None:
    heat = _blob(10, 20)  # region box x 20..30, y 10..20
    m = localize_one(heat, np.array([[25, 10, 35, 20], [0, 0, 2, 2]]))  # best: IoU 50 / 150
    assert m["iou"] == pytest.approx(1 / 3) and m["hit@0.25"] == 1.0 and m["hit@0.5"] == 0.0
    assert m["pointing"] == 1.0  # peak pixel (26, 14): centre 26.5 is inside 25..35
    assert np.isnan(m["energy"])  # no mask
    m = localize_one(heat, np.array([[27, 10, 37, 20]]))  # IoU 30 / 170; the peak (26.5) is left of 27
    assert m["iou"] == pytest.approx(30 / 170) and m["hit@0.25"] == 0.0 and m["pointing"] == 0.0


def test_summarize_means_and_patient_bootstrap() -> None:
    table = pd.DataFrame({
        "method": ["factor"] * 4, "attribute": ["mass"] * 4, "patient_id": ["a", "a", "b", "c"],
        "hit@0.25": [1.0, 1.0, 0.0, 1.0], "hit@0.5": [0.0, 1.0, 0.0, 0.0], "pointing": [1.0, 0.0, 0.0, 1.0],
        "energy": [0.5, np.nan, 0.1, 0.3], "iou": [0.3, 0.6, 0.0, 0.4]})
    s = summarize(table, n_boot=200).set_index("metric")
    assert s.loc["hit@0.25", "value"] == pytest.approx(0.75) and s.loc["pointing", "value"] == 0.5
    assert s.loc["energy", "value"] == pytest.approx(0.3)  # NaN (no mask) left out
    assert s.loc["hit@0.25", "n_patients"] == 3 and s.loc["hit@0.25", "n_images"] == 4
    # resampling patients: "a" brings 2 hits, "b" none, "c" one -> replicate means between 0 and 1
    assert 0.0 <= s.loc["hit@0.25", "ci_low"] <= 0.75 <= s.loc["hit@0.25", "ci_high"] <= 1.0
    assert s.loc["hit@0.25", "ci_low"] < s.loc["hit@0.25", "ci_high"]
    assert np.isnan(summarize(table, n_boot=0).set_index("metric").loc["pointing", "ci_low"])


def _bundle(tmp_path: Path, boxes: list[dict], record: bool) -> Bundle:
    row = {"image_id": "i1", "patient_id": "p1", "study_id": "s", "laterality": "L", "view": "CC",
           "path": "i1.png", "split": "test", "source": "x", "mass": 1}
    if record:  # original 200 x 100, crop x 10..90, y 0..200, flipped, scaled 1/2 -> processed 100 x 40
        row.update(orig_height=200, orig_width=100, crop_x0=10, crop_y0=0, crop_x1=90, crop_y1=200, scale_x=0.5,
                   scale_y=0.5, pad_left=0, pad_top=0, flipped=1, height=100, width=40)
    return Bundle(pd.DataFrame([row]), pd.DataFrame(boxes), root=tmp_path)


def test_truth_boxes_and_masks_from_original_space(tmp_path: Path) -> None:
    mask = np.zeros((200, 100), np.uint8)
    mask[40:60, 20:30] = 255
    write_png(tmp_path / "m.png", mask)
    b = _bundle(tmp_path, [{"image_id": "i1", "label": "mass", "xmin": 20, "ymin": 40, "xmax": 30, "ymax": 60,
                            "space": "original", "mask_path": "m.png"},
                           {"image_id": "i1", "label": "calcification", "xmin": 0, "ymin": 0, "xmax": 5,
                            "ymax": 5, "space": "original", "mask_path": ""}], record=True)
    boxes, m = truth_for(b, b.images.iloc[0], MASS, (100, 40))
    # x: crop -> 10..20, flip (width 80) -> 60..70, scale 0.5 -> 30..35; y: 40..60 -> 20..30
    np.testing.assert_allclose(boxes, [[30, 20, 35, 30]])
    assert m is not None and m.shape == (100, 40)
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (20, 30, 30, 35)
    assert list(scored_rows(b, MASS)) == [0]


def test_missing_label_column_and_missing_mask(tmp_path: Path) -> None:
    b = _bundle(tmp_path, [{"image_id": "i1", "label": "Mass", "xmin": 1, "ymin": 1, "xmax": 4, "ymax": 4,
                            "space": "processed"}], record=False)
    boxes, m = truth_for(b, b.images.iloc[0], MASS, (100, 40))
    assert boxes.tolist() == [[1, 1, 4, 4]] and m is None  # label matched by canonical name; no mask column
    with pytest.raises(DataError, match="no column 'distortion'"):
        scored_rows(b, AttributeSpec("distortion", "distortion", ("distortion",)))


def test_breast_prior_peaks_at_the_breast_centroid() -> None:
    image = np.zeros((100, 60), np.float32)
    image[10:90, 0:30] = 1.0  # a breast against the left edge
    prior = breast_prior_map(image)
    py, px = np.unravel_index(int(np.argmax(prior)), prior.shape)
    assert abs(py + 0.5 - 50) <= 1 and abs(px + 0.5 - 15) <= 1
    assert prior[:, 30:].max() == 0.0 and prior[:10].max() == 0.0
