"""CBIS-DDSM ROI masks -> boxes: exact boxes, the swapped mask/cropped columns, bad masks skipped,
and boxes that follow preprocessing onto the lesion."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammoclip.data.adapters import build_bundle
from mammoclip.data.adapters.cbis_ddsm import mask_box
from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import PreprocessOptions, preprocess
from mammoclip.imaging.imageio import read_image
from tests.imaging.dicom_factory import phantom, write_dicom

SHAPE = (400, 256)
LESION = (200, 90, 14)  # (row, col, radius) of the phantom's bright disc, left-side coordinates
COLS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
        "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
        "cropped image file path", "ROI mask file path"]
#: The disc's box in continuous pixels (x1/y1 exclusive): columns 76..104, rows 186..214.
LEFT_BOX = (76.0, 186.0, 105.0, 215.0)
RIGHT_BOX = (256.0 - 105.0, 186.0, 256.0 - 76.0, 215.0)  # the phantom mirrored: x -> 256 - x


def _case(root: Path, name: str, side: str) -> tuple[str, str, str]:
    """Full image, its lesion's binary mask (0/255 DICOM) and a cropped lesion image; relative paths."""
    img = phantom(SHAPE, side=side, lesion=LESION)
    full = f"{name}/1.1/1.2/000000.dcm"
    write_dicom(root / full, img, bits=12, laterality=None, view=None, patient_id=name)
    mask = f"{name}_1/1.3/1.4/000000.dcm"
    write_dicom(root / mask, (img == 3800).astype(np.uint8) * 255, bits=8, modality="OT", laterality=None, view=None)
    crop = f"{name}_1/1.3/1.5/000001.dcm"
    write_dicom(root / crop, img[170:230, 60:120] if side == "left" else img[170:230, 136:196], bits=12,
                modality="OT", laterality=None, view=None)
    return full, crop, mask


@pytest.fixture()
def cbis(tmp_path: Path) -> Path:
    root = tmp_path / "cbis"
    a_full, a_crop, a_mask = _case(root, "Mass-Training_P_00001_LEFT_CC", "left")
    b_full, b_crop, b_mask = _case(root, "Mass-Training_P_00002_RIGHT_MLO", "right")
    # A calcification cluster: two blobs in one PNG mask -> one box around both.
    calc = np.zeros(SHAPE, np.uint8)
    calc[50:60, 30:40] = 255
    calc[100:105, 150:161] = 255
    cv2.imwrite(str(root / "calc_mask.png"), calc)
    # P_00004: a binary mask made for another image size.
    c_full, _, _ = _case(root, "Mass-Training_P_00004_LEFT_MLO", "left")
    write_dicom(root / "small_mask.dcm", np.zeros((200, 128), np.uint8) + 255 * (np.arange(128) > 60), bits=8,
                modality="OT")
    rows = [
        ["P_00001", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 4, "MALIGNANT", 4, a_full, a_crop,
         a_mask + "\n"],  # CBIS paths can end with a newline
        ["P_00001", 3, "LEFT", "CC", 2, "calcification", "", "", 3, "BENIGN", 3, a_full, "missing_crop.dcm",
         "calc_mask.png"],
        # the known quirk: the mask column names the cropped image and the cropped column the mask
        ["P_00002", 2, "RIGHT", "MLO", 1, "mass", "OVAL", "CIRCUMSCRIBED", 2, "BENIGN_WITHOUT_CALLBACK", 2,
         b_full, b_mask, b_crop],
        ["P_00003", 2, "LEFT", "CC", 1, "mass", "OVAL", "CIRCUMSCRIBED", 2, "BENIGN", 2,
         "Mass-Training_P_00003_LEFT_CC/1.1/1.2/000000.dcm", "nowhere/crop.dcm", "nowhere/mask.dcm"],
        ["P_00004", 2, "LEFT", "MLO", 1, "mass", "OVAL", "CIRCUMSCRIBED", 2, "BENIGN", 2, c_full,
         "nowhere/crop.dcm", "small_mask.dcm"],
        ["P_00004", 2, "LEFT", "MLO", 2, "mass", "OVAL", "CIRCUMSCRIBED", 2, "BENIGN", 2, c_full,
         "", "corrupt_mask.dcm"],  # a truncated download
    ]
    (root / "corrupt_mask.dcm").write_bytes(b"DICM" + bytes(100))
    pd.DataFrame(rows, columns=COLS).to_csv(root / "mass_case_description_train_set.csv", index=False)
    return root


def test_mask_box_is_the_hull_of_all_blobs() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[3, 4] = 1
    mask[10:12, 20:25] = 1
    assert mask_box(mask) == (4.0, 3.0, 25.0, 12.0)
    assert mask_box(np.zeros((5, 5), np.uint8)) is None


def test_boxes_from_roi_masks(cbis: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mammoclip.data.adapters.cbis_ddsm"):
        bundle = build_bundle(cbis)
    boxes = bundle.boxes.set_index("finding_id")
    assert set(boxes["space"]) == {"original"}
    a = "Mass-Training_P_00001_LEFT_CC"
    assert tuple(boxes.loc[f"{a}_1", ["xmin", "ymin", "xmax", "ymax"]]) == LEFT_BOX
    assert (boxes.loc[f"{a}_1", "label"], boxes.loc[f"{a}_1", "pathology"]) == ("mass", "MALIGNANT")
    assert tuple(boxes.loc[f"{a}_2", ["xmin", "ymin", "xmax", "ymax"]]) == (30.0, 50.0, 161.0, 105.0)
    assert (boxes.loc[f"{a}_2", "label"], boxes.loc[f"{a}_2", "image_id"]) == ("calcification", a)
    # swapped columns: the full-size binary file is taken, not the cropped image
    b = "Mass-Training_P_00002_RIGHT_MLO_1"
    assert tuple(boxes.loc[b, ["xmin", "ymin", "xmax", "ymax"]]) == RIGHT_BOX
    # missing and wrong-size masks: skipped, logged, listed; nothing else lost
    assert len(boxes) == 3
    skipped = bundle.boxes.attrs["skipped"]
    assert len(skipped) == 3
    assert "P_00003" in skipped[0] and "not found" in skipped[0]
    assert "P_00004_LEFT_MLO_1" in skipped[1] and "200x128 differs from the image's 400x256" in skipped[1]
    assert "P_00004_LEFT_MLO_2" in skipped[2] and "corrupt_mask.dcm" in skipped[2]
    assert sum("box skipped" in r.message for r in caplog.records) == 3
    assert len(bundle.images) == 4  # images are listed whether or not their masks are usable


def test_boxes_can_be_left_out(cbis: Path) -> None:
    bundle = build_bundle(cbis, boxes=False)
    assert len(bundle.boxes) == 0 and len(bundle.images) == 4


def test_boxes_follow_preprocessing_onto_the_lesion(cbis: Path, tmp_path: Path) -> None:
    bundle = build_bundle(cbis)
    bundle.images = bundle.images[bundle.images["patient_id"].isin(["P_00001", "P_00002"])].reset_index(drop=True)
    result = preprocess(bundle, tmp_path / "out", PreprocessOptions(size=(120, 80), window="minmax"))
    assert result.processed == 2 and result.failed == 0
    out = load_bundle(tmp_path / "out")
    masses = out.boxes[out.boxes["label"] == "mass"]
    assert len(masses) == 2 and set(masses["space"]) == {"processed"}
    assert set(masses["pathology"]) == {"MALIGNANT", "BENIGN_WITHOUT_CALLBACK"}
    paths = dict(zip(out.images["image_id"], out.images["path"], strict=True))
    flipped = dict(zip(out.images["image_id"], out.images["flipped"], strict=True))
    assert flipped["Mass-Training_P_00002_RIGHT_MLO"] == 1  # the right breast was mirrored, its box too
    for box in masses.itertuples():
        img = read_image(out.abspath(paths[box.image_id]))
        inside = img[int(np.ceil(box.ymin)):int(box.ymax), int(np.ceil(box.xmin)):int(box.xmax)]
        assert inside.size and inside.mean() > 200, box  # the 3800/4095 lesion under the mapped box
    # the right breast is the left one mirrored: after the flip both lesions land on the same pixels
    coords = masses[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
    np.testing.assert_allclose(coords[0], coords[1], atol=1.0)
