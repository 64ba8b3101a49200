"""The fast paths of the breast pipeline give OpenCV's results: sparse area resize, codes + LUT input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mammoclip.data.breast import (
    BreastPreprocess,
    TransformRecord,
    map_codes,
    plan_transform,
    resize_area,
    segment_breast,
)
from tests.data.dicom_factory import phantom

SHAPES = [
    ((700, 460), (304, 182)),  # non-integer factors on both axes (the usual case)
    ((400, 256), (152, 96)),
    ((1000, 999), (500, 998)),  # integer on one axis, barely shrinking on the other
    ((513, 300), (512, 299)),  # factors just above 1: tiny partial overlaps (OpenCV's 1e-3 cut-off)
    ((600, 400), (300, 200)),  # integer factors: OpenCV's fast path
    ((300, 200), (450, 120)),  # upscaling one axis: OpenCV's own rule
    ((90, 64), (90, 40)),  # height unchanged
]


@pytest.mark.parametrize(("src", "dst"), SHAPES, ids=[f"{s}->{d}" for s, d in SHAPES])
@pytest.mark.parametrize("flip", [False, True])
def test_resize_area_matches_opencv(src: tuple[int, int], dst: tuple[int, int], flip: bool) -> None:
    image = np.random.default_rng(0).integers(0, 4096, src).astype(np.float32)
    ref_in = np.ascontiguousarray(image[:, ::-1]) if flip else image
    ref = cv2.resize(ref_in, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    out = resize_area(image, dst[1], dst[0], flip=flip)
    assert out.dtype == np.float32 and out.shape == dst and out.flags.c_contiguous
    np.testing.assert_allclose(out, ref, rtol=0, atol=4096 * 1e-6)  # float32 rounding only


def test_resize_area_accepts_integer_views() -> None:
    codes = np.random.default_rng(1).integers(0, 65536, (500, 400)).astype(np.uint16)
    view = codes[17:450, 5:390]  # a crop: strided, not contiguous
    ref = cv2.resize(view.astype(np.float32), (150, 260), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(resize_area(view, 150, 260), ref, rtol=0, atol=65536 * 1e-6)


def opencv_reference(image: np.ndarray, record: TransformRecord, bits: int) -> np.ndarray:
    """The straightforward pipeline: flip the crop, OpenCV area resize in float32, min-max window, pad."""
    crop = image[record.crop_y0:record.crop_y1, record.crop_x0:record.crop_x1].astype(np.float32)
    lo, hi = float(crop.min()), float(crop.max())
    if record.flipped:
        crop = np.ascontiguousarray(crop[:, ::-1])
    nw, nh = round(record.crop_width * record.scale_x), round(record.crop_height * record.scale_y)
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
    unit = np.clip((small - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0, 1)
    out = np.zeros((record.height, record.width), np.float32)
    out[record.pad_top:record.pad_top + nh, record.pad_left:record.pad_left + nw] = unit
    return np.rint(out * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pipeline_within_one_grey_level_of_opencv(bits: int, resize: str, side: str) -> None:
    image = phantom((700, 460), side=side, seed=2).astype(np.float32)
    transform = BreastPreprocess((304, 182), resize=resize, bits=bits, window="minmax")
    out, record = transform(image)
    assert record.flipped == (side == "right")
    ref = opencv_reference(image, record, bits)
    diff = np.abs(out.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1  # float32 rounding can move a value across a .5 boundary, nothing more
    assert (diff == 0).mean() > 0.999


LUTS = {
    "affine": (4095.0 - np.arange(65536, dtype=np.float32)) * np.float32(0.5) + np.float32(7),  # inverted, rescaled
    "windowed": np.clip((np.arange(65536, dtype=np.float32) - 1000) * np.float32(0.3), 0, 800),  # VOI-like clip
    "curve": np.sqrt(np.arange(65536, dtype=np.float32)),
}


@pytest.mark.parametrize("name", sorted(LUTS))
def test_map_codes_equals_the_gather(name: str) -> None:
    codes = np.random.default_rng(3).integers(0, 65536, (300, 200)).astype(np.uint16)[10:250, 5:150]
    lut = LUTS[name]
    mapped = map_codes(codes, lut)
    assert mapped.dtype == np.float32
    np.testing.assert_array_equal(mapped, lut[codes])  # bit for bit, affine shortcut or not


@pytest.mark.parametrize("name", sorted(LUTS))
def test_codes_with_lut_equal_values(name: str) -> None:
    """Integer codes + LUT give the very same output as the mapped values (only the crop is mapped)."""
    codes = phantom((500, 320), side="right", seed=4)
    lut = LUTS[name]
    values = lut[codes]
    transform = BreastPreprocess((160, 96), window="percentile", bits=16)
    out_values, rec_values = transform(values)
    out_codes, rec_codes = transform(codes, lut=lut)
    assert rec_codes == rec_values
    np.testing.assert_array_equal(out_codes, out_values)
    seg_values, seg_codes = segment_breast(values), segment_breast(codes, lut=lut)
    assert (seg_codes.x0, seg_codes.y0, seg_codes.x1, seg_codes.y1, seg_codes.chest_wall) == (
        seg_values.x0, seg_values.y0, seg_values.x1, seg_values.y1, seg_values.chest_wall)


def test_render_reuses_a_plan() -> None:
    image = phantom((400, 256), seed=5)
    transform = BreastPreprocess((120, 80))
    record, _ = transform.plan(image)
    assert record == plan_transform(image.shape, (record.crop_x0, record.crop_y0, record.crop_x1, record.crop_y1),
                                    (120, 80), flip=record.flipped)
    np.testing.assert_array_equal(transform.render(image, record), transform(image)[0])
