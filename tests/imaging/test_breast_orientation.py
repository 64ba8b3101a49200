"""The chest-wall side follows the DICOM header (PatientOrientation, then ImageLaterality); the pixel
estimate is the fallback and a cross-check recorded in the transform record."""

from __future__ import annotations

import numpy as np
import pytest

from mammoclip.imaging.breast import BreastPreprocess, TransformRecord, chest_wall_from_header, segment_breast
from mammoclip.imaging.dicom import read_dicom_header
from tests.imaging.test_dicom import real_cases


def frame_filling_right_breast() -> np.ndarray:
    """A right breast (chest wall at the right edge) that fills the frame but for air at its lower right.

    The pixel estimate counts breast pixels per half and so picks the wrong side (left).
    """
    rng = np.random.default_rng(3)
    img = (1500 + rng.normal(0, 40, (300, 200))).clip(0, 4095)
    img[220:, 120:] = 0  # a wedge of air on the chest-wall half
    return img.astype(np.uint16)


@pytest.mark.parametrize(("orientation", "laterality", "side", "source"), [
    (["A", "R"], None, "left", "patient_orientation"),  # left CC
    (["P", "L"], None, "right", "patient_orientation"),  # right CC
    (["A", "FR"], "R", "left", "patient_orientation"),  # a right breast stored mirrored: orientation wins
    (["P", "FL"], "L", "right", "patient_orientation"),
    ("P\\L", None, "right", "patient_orientation"),  # a raw string, as some writers leave it
    (["CC"], "L", "left", "laterality"),  # CBIS-DDSM puts the view name in PatientOrientation
    ([], "R", "right", "laterality"),
    (["", ""], None, None, "pixels"),
    (None, None, None, "pixels"),
])
def test_header_rule(orientation: object, laterality: str | None, side: str | None, source: str) -> None:
    assert chest_wall_from_header(orientation, laterality) == (side, source)


def test_header_flips_a_frame_filling_breast_that_the_pixels_get_wrong() -> None:
    img = frame_filling_right_breast()
    assert segment_breast(img).chest_wall == "left"  # the failure the header fixes
    transform = BreastPreprocess((60, 40))
    out, record = transform(img, patient_orientation=["P", "L"])
    assert record.flipped and record.orientation_source == "patient_orientation" and record.orientation_disagrees
    # after the flip the air wedge (chest-wall half) sits on the left, at the bottom
    assert out[50:, :10].mean() < 0.2 * out[:30, :10].mean()
    _, by_laterality = transform(img, laterality="R")
    assert by_laterality.flipped and by_laterality.orientation_source == "laterality"


def test_without_header_the_pixels_decide_and_nothing_disagrees() -> None:
    img = frame_filling_right_breast()
    _, record = BreastPreprocess((60, 40))(img)
    assert not record.flipped and record.orientation_source == "pixels" and not record.orientation_disagrees
    mirrored = np.ascontiguousarray(img[:, ::-1])
    _, agree = BreastPreprocess((60, 40))(mirrored, patient_orientation=["P", "L"])
    assert agree.flipped and not agree.orientation_disagrees  # header and pixels agree here


def test_records_without_orientation_fields_still_load() -> None:
    _, record = BreastPreprocess((60, 40))(frame_filling_right_breast(), laterality="R")
    row = record.to_dict()
    assert row["orientation_source"] == "laterality" and row["orientation_disagrees"] == 1
    assert TransformRecord.from_row(row) == record
    old = {k: v for k, v in row.items() if not k.startswith("orientation")}  # a sidecar from before
    loaded = TransformRecord.from_row(old)
    assert loaded.orientation_source == "pixels" and not loaded.orientation_disagrees
    assert TransformRecord.from_row({**old, "orientation_source": "", "orientation_disagrees": float("nan")}) == loaded
    with pytest.raises(KeyError):
        TransformRecord.from_row({k: v for k, v in old.items() if k != "crop_x0"})


def test_real_films_laterality_agrees_with_the_pixels() -> None:
    """CBIS-DDSM films: PatientOrientation holds the view name, Laterality the side; the result is unchanged."""
    for path in real_cases():
        meta = read_dicom_header(path)
        assert meta.patient_orientation in (("CC",), ("MLO",)) and meta.image_laterality in ("L", "R")
        assert chest_wall_from_header(meta.patient_orientation, meta.image_laterality) == (
            "left" if meta.image_laterality == "L" else "right", "laterality")
