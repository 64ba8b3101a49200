"""The fast paths of the breast pipeline give OpenCV's results: sparse area resize, codes + LUT input,
the transposed render path, and the segmentation's crop boxes on the real films (pinned)."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from mammoclip.imaging.breast import (
    WINDOWS,
    BreastPreprocess,
    TransformRecord,
    _components,
    _foreground,
    _label_counts,
    _largest_component,
    _lookup,
    _to_uint8,
    map_codes,
    plan_transform,
    resize_area,
    segment_breast,
    tail_percentiles,
    to_bits,
    to_unit,
)
from mammoclip.imaging.dicom import decode_dicom
from tests.imaging.dicom_factory import phantom
from tests.imaging.test_dicom import real_cases

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


@pytest.mark.parametrize(("src", "dst"), SHAPES, ids=[f"{s}->{d}" for s, d in SHAPES])
@pytest.mark.parametrize("flip", [False, True])
def test_resize_area_transposed_is_the_transpose(src: tuple[int, int], dst: tuple[int, int], flip: bool) -> None:
    image = np.random.default_rng(0).integers(0, 4096, src).astype(np.float32)
    out = resize_area(image, dst[1], dst[0], flip=flip, transposed=True)
    assert out.shape == dst[::-1] and out.flags.c_contiguous and not np.shares_memory(out, image)
    np.testing.assert_array_equal(out, resize_area(image, dst[1], dst[0], flip=flip).T)


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


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("window", ["minmax", "percentile"])
def test_render_fast_path_equals_the_plain_steps(side: str, window: str) -> None:
    """Stretch renders window and cast in the resize's transposed layout: the same bytes as resize, then window."""
    codes = phantom((900, 600), side=side, seed=6)
    transform = BreastPreprocess((304, 182), window=window, bits=8)
    record, _ = transform.plan(codes)
    values = codes[record.crop_y0:record.crop_y1, record.crop_x0:record.crop_x1].astype(np.float32)
    lo, hi = WINDOWS[window](values)
    plain = to_bits(to_unit(record.apply_cropped(values), lo, hi), 8)
    np.testing.assert_array_equal(transform.render(codes, record), plain)


def test_render_leaves_a_float_input_alone() -> None:
    """Window and cast run in place only on arrays the resize made, never on the caller's image."""
    image = phantom((120, 80), seed=8).astype(np.float32)
    before = image.copy()
    for size in ((120, 80), (60, 40)):  # no resize (the crop is returned as is), and a resize
        record = plan_transform(image.shape, (0, 0, 80, 120), size)
        BreastPreprocess(size).render(image, record)
        np.testing.assert_array_equal(image, before)


def test_largest_component_matches_the_stats_call() -> None:
    rng = np.random.default_rng(7)
    binary = (rng.random((120, 90)) > 0.55).astype(np.uint8)
    labels, label = _largest_component(binary)
    n, ref_labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    np.testing.assert_array_equal(labels, ref_labels)
    assert label == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    assert _largest_component(np.zeros((5, 5), np.uint8)) is None


#: Crop boxes ``(x0, y0, x1, y1, chest wall)`` of the real films, as segmented before the
#: segmentation was sped up (bincount areas, cv2 masks and bounding box): the speed-up is exact.
REAL_BOXES = {
    "sfm-benign-0/1-130.dcm": (0, 0, 1328, 4432, "left"),
    "sfm-benign-0/1-131.dcm": (0, 0, 1380, 3977, "left"),
    "sfm-benign-0/1-132.dcm": (1725, 827, 2864, 4152, "right"),
    "sfm-benign-0/1-133.dcm": (1485, 0, 2920, 3971, "right"),
    "sfm-malign-0/1-280.dcm": (0, 647, 1544, 4265, "left"),  # margin stops at the film border
    "sfm-malign-0/1-281.dcm": (0, 0, 1644, 4398, "left"),
    "sfm-malign-0/1-282.dcm": (1182, 540, 2592, 4232, "right"),  # margin stops at the film border
    "sfm-malign-0/1-283.dcm": (1096, 0, 2632, 4482, "right"),
}


def test_real_film_crops_unchanged() -> None:
    found = {}
    for path in real_cases():
        codes, lut, _ = decode_dicom(path)
        seg = segment_breast(codes, lut=lut)
        found[f"{path.parent.name}/{path.name}"] = (seg.x0, seg.y0, seg.x1, seg.y1, seg.chest_wall)
    assert found == REAL_BOXES


def _tail_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    spikes = np.zeros(5000, np.float32)
    spikes[rng.integers(0, 5000, 6)] = 1e30
    signed_zeros = np.full(4500, -0.0, np.float32)
    signed_zeros[:3] = np.inf
    with_nan = rng.normal(size=6000).astype(np.float32)
    with_nan[17] = np.nan
    return [
        ("normal float32", rng.normal(size=(300, 200)).astype(np.float32)),
        ("few levels (ties at both thresholds)", rng.integers(0, 4, 20000).astype(np.float32)),
        ("float64", rng.random(9000)),
        ("sparse spikes", spikes),
        ("signed zeros and inf", signed_zeros),
        ("sorted descending", np.sort(rng.exponential(size=7000))[::-1].astype(np.float32)),
        ("constant", np.full(5000, 3.25, np.float32)),
        ("NaN (numpy's own path)", with_nan),
        ("short (numpy's own path)", rng.normal(size=37).astype(np.float32)),
        ("integer codes (numpy's own path)", rng.integers(0, 4096, 8000).astype(np.uint16)),
        ("a film copy", resize_area(map_codes(phantom((1520, 912)), None), 307, 512)),
    ]


@pytest.mark.parametrize("q", [(0.5, 99.5), (99.5, 0.5), (0, 100), (50,), (0.1, 25, 99.9), (100,)])
def test_tail_percentiles_are_numpys_to_the_bit(q: tuple[float, ...]) -> None:
    for name, values in _tail_cases():
        with np.errstate(invalid="ignore"):
            ref = np.asarray(np.percentile(values, q), np.float64)
            got = np.asarray(tail_percentiles(values, q), np.float64)
        assert got.view(np.int64).tolist() == ref.view(np.int64).tolist(), name


def test_tail_percentiles_fall_back_when_the_sample_misplaces_a_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    # The strided sample (every 12th value) holds all the small values: its low threshold has only
    # ~70 values at or below it, fewer than the 0.5th percentile's rank (500), so numpy answers.
    values = np.full(100_000, 1e6, np.float32)
    values[::12] = np.arange(values[::12].size)
    ref = np.percentile(values, (0.5, 99.5))
    calls = []
    percentile = np.percentile
    monkeypatch.setattr(np, "percentile", lambda *a, **k: calls.append(1) or percentile(*a, **k))
    assert tail_percentiles(values, (0.5, 99.5)) == tuple(float(v) for v in ref)
    assert calls == [1]


def _reference_foreground(small: np.ndarray, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The stretch and threshold as written before they were sped up (full float64 stretch, np.percentile)."""
    use = exclude is not None and exclude.any()
    values = small[::2, ::2][exclude[::2, ::2] == 0] if use else small
    if values.size == 0:
        values = small
    lo, hi = np.percentile(values, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    u8 = (np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    sample = u8[::2, ::2][exclude[::2, ::2] == 0].reshape(-1, 1) if use else u8
    thr, _ = cv2.threshold(sample, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, fg = cv2.threshold(u8, max(1.0, 0.5 * thr), 1, cv2.THRESH_BINARY)
    return u8, fg


@pytest.mark.parametrize("kind", ["tissue", "levels", "skewed", "flat", "narrow"])
@pytest.mark.parametrize("excluded", [0.0, 0.02, 0.5, 1.0])
def test_stretch_and_foreground_equal_the_plain_computation(kind: str, excluded: float) -> None:
    rng = np.random.default_rng(len(kind) + int(100 * excluded))
    shape = (203, 131)
    small = {
        "tissue": rng.normal(900, 250, shape),
        "levels": rng.integers(0, 4, shape),
        "skewed": rng.random(shape) ** 4 * 65535,
        "flat": np.full(shape, 3.5),
        "narrow": rng.normal(0, 1e-3, shape) + 1e4,
    }[kind].astype(np.float32)
    exclude = (rng.random(shape) < excluded).astype(np.uint8) if excluded else None
    u8, fg = _reference_foreground(small, exclude)
    np.testing.assert_array_equal(_to_uint8(small, exclude), u8)
    got = _foreground(small, exclude)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, fg)


def test_components_counts_and_lookup_match_opencv_and_numpy() -> None:
    rng = np.random.default_rng(3)
    for density in (0.3, 0.55, 0.9):  # many specks (> 256 labels), some, one large piece
        binary = (rng.random((150, 110)) < density).astype(np.uint8)
        n, labels = _components(binary)
        n_ref, ref = cv2.connectedComponents(binary, connectivity=8)
        assert n == n_ref and labels.dtype == np.uint16
        np.testing.assert_array_equal(labels, ref)
        mask = (rng.random(binary.shape) < 0.3).astype(np.uint8)
        np.testing.assert_array_equal(_label_counts(labels, n), np.bincount(ref.ravel(), minlength=n))
        np.testing.assert_array_equal(_label_counts(labels, n, mask), np.bincount(ref[mask > 0], minlength=n))
        table = rng.integers(0, 256, n).astype(np.uint8)
        np.testing.assert_array_equal(_lookup(table, labels), table[ref])


#: Boxes and downsampled-mask digests of film-style images at 760 x 456 (seed 1), as segmented before
#: the film path was sped up (exact percentiles from the tails, 8/16-bit labels, byte lookups).
FILM_760 = {
    0: (0, 153, 293, 652, "left", "576b51615ce27b35e74e26a45aae5ffb"),
    1: (0, 0, 342, 730, "left", "670ec638734a1247ba5dd8c992e6e2ef"),
    2: (157, 149, 456, 622, "right", "b9b4c7f7d0b260a758836bbea3999c4b"),
    3: (120, 0, 456, 701, "right", "25fc4c7e0d1579c364239e185c4a5e1d"),
    4: (0, 112, 291, 620, "left", "e9c68299a5951694396ed5d666531d9e"),
    5: (0, 0, 317, 654, "left", "215ceb95e6afd84c1d075d8dad9f13a5"),
}


def test_film_crops_and_masks_unchanged() -> None:
    from mammoclip.synthetic.film import film_image

    found = {}
    for i in FILM_760:
        seg = segment_breast(film_image(1, i, (760, 456)).image)
        digest = hashlib.md5(np.ascontiguousarray(seg.mask_small).tobytes()).hexdigest()
        found[i] = (seg.x0, seg.y0, seg.x1, seg.y1, seg.chest_wall, digest)
    assert found == FILM_760
