"""Breast crop and the transform record: real CBIS-DDSM films, codec/photometric invariance, box and
mask round trips, and the paper-compatible mode against an independent implementation of the spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from mammoclip.data.preprocess import PreprocessOptions, process_image
from mammoclip.imaging.breast import (
    BreastPreprocess,
    BreastPreprocessd,
    TransformRecord,
    _count_up_continuing_ones,
    plan_transform,
    segment_breast,
)
from mammoclip.imaging.dicom import DicomMeta, read_dicom
from tests.imaging.dicom_factory import jpegls_available, phantom, write_dicom
from tests.imaging.test_dicom import real_cases

# --- real films --------------------------------------------------------------------------------

def independent_breast(image: np.ndarray, k: int = 8, frac: float = 0.2) -> tuple[np.ndarray, list[tuple]]:
    """Breast pixels (full-res coordinates of k x k block centres) and the bboxes of other blobs.

    Block means, a threshold at ``frac`` of the 99th percentile, a 7x7 opening and the largest
    component (scipy): a different method from the library's (OpenCV Otsu on a resize).
    """
    h, w = image.shape
    small = image[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    raw = small > frac * np.percentile(small, 99)
    opened = ndi.binary_opening(raw, structure=np.ones((7, 7)))
    lab, n = ndi.label(opened)
    breast = lab == 1 + int(np.argmax(ndi.sum(opened, lab, range(1, n + 1))))
    ys, xs = np.nonzero(breast)
    pts = np.stack([xs * k + k // 2, ys * k + k // 2], axis=1)
    bx0, by0, bx1, by1 = xs.min() * k, ys.min() * k, (xs.max() + 1) * k, (ys.max() + 1) * k
    lab2, _ = ndi.label(raw)
    others = []
    for sl in ndi.find_objects(lab2):
        x0, y0, x1, y1 = sl[1].start * k, sl[0].start * k, sl[1].stop * k, sl[0].stop * k
        big = (x1 - x0) * (y1 - y0) >= 16 * k * k
        apart = x1 < bx0 or x0 > bx1 or y1 < by0 or y0 > by1
        if big and apart:
            others.append((x0, y0, x1, y1))
    return pts, others


@pytest.fixture(scope="module")
def real_images() -> list[tuple[Path, np.ndarray, DicomMeta]]:
    """The 8 CBIS-DDSM films, each decoded once for the whole module (~1 s in all)."""
    return [(p, *read_dicom(p)) for p in real_cases()]


def test_real_crop_contains_breast_and_excludes_labels(real_images: list[tuple[Path, np.ndarray, DicomMeta]]) -> None:
    n_labels = 0
    for path, image, _ in real_images:
        seg = segment_breast(image)
        pts, others = independent_breast(image)
        inside = (pts[:, 0] >= seg.x0) & (pts[:, 0] < seg.x1) & (pts[:, 1] >= seg.y0) & (pts[:, 1] < seg.y1)
        assert inside.all(), f"{path.name}: {(~inside).sum()} breast pixels outside the crop"
        for x0, y0, x1, y1 in others:
            n_labels += 1
            assert x1 <= seg.x0 or x0 >= seg.x1 or y1 <= seg.y0 or y0 >= seg.y1, f"{path.name}: label in crop"
        # the chest wall is where the breast touches the frame
        assert seg.chest_wall == ("left" if pts[:, 0].mean() < image.shape[1] / 2 else "right")
    assert n_labels >= 4  # the films carry "LCC", "RMLO", ... markers away from the breast


@pytest.mark.parametrize("bits,resize", [(8, "stretch"), (16, "pad")])
def test_real_output_shape_and_dtype(real_images: list[tuple[Path, np.ndarray, DicomMeta]], bits: int,
                                     resize: str) -> None:
    """Every real film gives the requested size and dtype, mirrored to the left exactly when it is a right breast.

    The transform runs on the module's cached decodes; one film also goes through ``process_image``
    from its path, which must give the same pixels and record (the films carry no VOI, so the
    default ``voi`` window falls back to min-max in the crop, as here).
    """
    options = PreprocessOptions(size=(152, 96), bits=bits, resize=resize)
    transform = BreastPreprocess(options.size, resize=resize, bits=bits, window="minmax")
    full = 255 if bits == 8 else 65535
    assert len(real_images) == 8
    for path, image, meta in real_images:
        assert not meta.has_voi and meta.laterality in ("L", "R")
        out, record = transform(image)
        assert out.shape == (152, 96) and out.dtype == (np.uint8 if bits == 8 else np.uint16), path.name
        assert record.flipped == (meta.laterality == "R"), path.name  # chest wall ends up on the left
        assert (record.orig_height, record.orig_width) == image.shape == (meta.rows, meta.columns)
        # windowed inside the crop: dark background at 0, dense tissue near the top of the range
        assert out.min() == 0 and out.max() > 0.75 * full, path.name
        if resize == "pad":
            assert abs(record.scale_x - record.scale_y) < 0.02 * record.scale_x, path.name
            assert record.pad_left == 0 and out[:, :8].mean() > out[:, -8:].mean(), path.name
    path, image, meta = real_images[2]  # a right breast: gets flipped
    out, record = process_image(path, options)
    expected, expected_record = transform(image, patient_orientation=meta.patient_orientation,
                                          laterality=meta.image_laterality)
    assert record.orientation_source == "laterality" and not record.orientation_disagrees
    assert record == expected_record and record.flipped and (record.orig_height, record.orig_width) == (4560, 2864)
    np.testing.assert_array_equal(out, expected)


# --- synthetic variants ------------------------------------------------------------------------

VARIANTS = {
    "plain": ({}, "minmax"),
    "monochrome1": ({"photometric": "MONOCHROME1"}, "minmax"),
    "rescale": ({"slope": 2.0, "intercept": -50.0}, "minmax"),
    "rle": ({"syntax": "rle"}, "minmax"),
    "j2k": ({"syntax": "j2k"}, "minmax"),
    "jpegls": ({"syntax": "jpegls"}, "minmax"),
    "jpegll": ({"syntax": "jpegll"}, "minmax"),
    "mono1_rle_rescale": ({"photometric": "MONOCHROME1", "syntax": "rle", "slope": 2.0, "intercept": -100.0}, "minmax"),
    # a linear window over the full 12-bit range equals the min-max of a crop holding 0 and 4095
    "voi_window": ({"window": (2048.0, 4096.0)}, "voi"),
    "voi_window_j2k_mono1": ({"window": (2048.0, 4096.0), "syntax": "j2k", "photometric": "MONOCHROME1"}, "voi"),
    "voi_window_jpegll_mono1": ({"window": (2048.0, 4096.0), "syntax": "jpegll", "photometric": "MONOCHROME1"},
                                "voi"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = write_dicom(tmp_path_factory.mktemp("ref") / "ref.dcm", phantom((300, 200), side="right"), bits=12)
    return process_image(path, PreprocessOptions(size=(120, 80), window="minmax"))[0]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_give_same_processed_image(tmp_path: Path, reference: np.ndarray, name: str) -> None:
    kw, window = VARIANTS[name]
    if kw.get("syntax") == "jpegls" and not jpegls_available():
        pytest.skip("imagecodecs without JPEG-LS cannot write the fixture")
    path = write_dicom(tmp_path / "v.dcm", phantom((300, 200), side="right"), bits=12, **kw)
    out, _ = process_image(path, PreprocessOptions(size=(120, 80), window=window))
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1


def test_bright_frame_and_label_do_not_widen_crop() -> None:
    img = phantom((400, 256), side="left", label=True).astype(np.float32)
    img[:, -6:] = 4095  # film frame on the far edge
    img[:4, :] = 4095  # and along the top, touching the breast side
    img += np.random.default_rng(1).normal(0, 20, img.shape).astype(np.float32)
    seg = segment_breast(img)
    assert seg.x1 < 0.75 * 256 and seg.chest_wall == "left"
    assert seg.y0 < 0.1 * 400 and seg.y1 > 0.9 * 400


# --- record: boxes and masks -------------------------------------------------------------------

RECORDS = [
    plan_transform((400, 256), (10, 20, 170, 390), (96, 64), resize="stretch", flip=False),
    plan_transform((400, 256), (80, 5, 256, 400), (96, 64), resize="stretch", flip=True),
    plan_transform((400, 256), (0, 30, 150, 360), (96, 96), resize="pad", flip=True, anchor="left"),
    plan_transform((400, 256), (0, 30, 150, 360), (64, 96), resize="pad", flip=False, anchor="right"),
]


@pytest.mark.parametrize("record", RECORDS, ids=range(len(RECORDS)))
def test_box_round_trip_within_one_pixel(record: TransformRecord) -> None:
    rng = np.random.default_rng(0)
    x0 = rng.uniform(record.crop_x0, record.crop_x1 - 20, 50)
    y0 = rng.uniform(record.crop_y0, record.crop_y1 - 20, 50)
    boxes = np.stack([x0, y0, x0 + rng.uniform(2, 20, 50), y0 + rng.uniform(2, 20, 50)], axis=1)
    fwd = record.map_boxes(boxes)
    assert (fwd[:, 2] >= fwd[:, 0]).all() and (fwd[:, 0] >= 0).all() and (fwd[:, 2] <= record.width).all()
    back = record.map_boxes(fwd, inverse=True)
    assert np.abs(back - boxes).max() < 1.0
    # the record survives a trip through manifest columns
    assert TransformRecord.from_row(record.to_dict()) == record


@pytest.mark.parametrize("record", RECORDS, ids=range(len(RECORDS)))
def test_mask_follows_box(record: TransformRecord) -> None:
    mask = np.zeros((400, 256), dtype=bool)
    mask[150:210, 90:140] = True  # inside every record's crop
    out = record.apply(mask, interpolation="nearest")
    ys, xs = np.nonzero(out)
    box = record.map_boxes(np.array([90, 150, 140, 210]))[0]
    assert abs(xs.min() - box[0]) <= 1 and abs(xs.max() + 1 - box[2]) <= 1
    assert abs(ys.min() - box[1]) <= 1 and abs(ys.max() + 1 - box[3]) <= 1
    back = record.invert(out)
    iou = (back & mask).sum() / (back | mask).sum()
    assert back.shape == mask.shape and iou > 0.7
    # back on the original grid the mask is off by at most one processed pixel
    ys, xs = np.nonzero(back)
    tol = 1.0 / min(record.scale_x, record.scale_y) + 1
    assert np.abs(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) - [90, 150, 140, 210]).max() <= tol


def test_dict_wrapper_moves_mask_with_image() -> None:
    image = phantom((300, 200), side="right").astype(np.float32)
    mask = np.zeros((300, 200), dtype=np.uint8)
    mask[192:208, 200 - 98:200 - 82] = 1  # inside the lesion (row 200, col 90, mirrored)
    data = {"image": image, "mask": mask, "id": "x"}
    out = BreastPreprocessd(BreastPreprocess((120, 80)))(data)
    assert out["id"] == "x" and data["image"] is image  # input untouched
    assert out["image"].shape == out["mask"].shape == (120, 80)
    assert out["transform"].flipped
    assert out["image"][out["mask"] > 0].mean() > 1.5 * out["image"][out["image"] > 0].mean()


# --- paper-compatible mode ---------------------------------------------------------------------

def spec_longest_runs(flags: np.ndarray) -> np.ndarray:
    """Indices of all runs of True whose length is the maximum (docs/original.md §1 step 5), by a loop."""
    runs, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    best = max(b - a for a, b in runs)
    return np.concatenate([np.arange(a, b) for a, b in runs if b - a == best])


def spec_paper_preprocess(values: np.ndarray, monochrome1: bool, size: tuple[int, int]) -> np.ndarray:
    """docs/original.md §1 steps 2-6 written from the text, independently of the library."""
    import cv2

    x = values.astype(np.float32)[5:-5, 5:-5]  # step 2 (dicomsdl decodes to float32)
    if monochrome1:  # step 3: max of the cropped image
        x = x.max() - x
    x = ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)  # step 4
    t = x.copy()
    t[t <= 40] = 0  # step 5
    h = t.shape[0]
    band = t[h // 2 - int(0.4 * h): h // 2 + int(0.4 * h)]
    cols = spec_longest_runs(band.std(axis=0) != 0)
    tc = t[:, cols]
    w = tc.shape[1]
    rows = spec_longest_runs(tc[:, w // 2 - int(0.4 * w): w // 2 + int(0.4 * w)].std(axis=1) != 0)
    crop = x[rows][:, cols]
    return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_AREA)  # step 6


@pytest.mark.parametrize("photometric,side,seed", [("MONOCHROME2", "left", 0), ("MONOCHROME1", "right", 1),
                                                    ("MONOCHROME2", "right", 2)])
def test_paper_mode_matches_spec_pixel_for_pixel(tmp_path: Path, photometric: str, side: str, seed: int) -> None:
    display = phantom((360, 240), side=side, seed=seed)
    # a background that is not flat and an odd border: the heuristic has something to do
    display[:, :] = np.maximum(display, np.random.default_rng(seed).integers(0, 30, display.shape))
    path = write_dicom(tmp_path / "p.dcm", display, bits=12, photometric=photometric, slope=1.0)
    size = (152, 91)
    out, record = process_image(path, PreprocessOptions(size=size, mode="paper"))
    values, meta = read_dicom(path, invert=False)
    expected = spec_paper_preprocess(values, meta.inverted, size)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and not record.flipped
    assert record.crop_x0 >= 5 and record.crop_y1 <= 360 - 5


def test_paper_run_counter_matches_spec_away_from_edges() -> None:
    flags = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    counts = _count_up_continuing_ones(flags)
    assert counts.tolist() == [-1, 2, 2, -1, 1, -1, -1, 3, 3, 3, -1]
    np.testing.assert_array_equal(np.where(counts == counts.max())[0], spec_longest_runs(flags))
    # the original undercounts runs touching an end by one (kept for exact reproduction)
    assert _count_up_continuing_ones(np.array([1, 1, 1, 0], dtype=bool)).tolist() == [2, 2, 2, -1]


def test_paper_mode_matches_spec_on_a_real_film() -> None:
    path = real_cases()[3]
    out, record = process_image(path, PreprocessOptions(size=(380, 228), mode="paper"))
    values, meta = read_dicom(path, invert=False)
    np.testing.assert_array_equal(out, spec_paper_preprocess(values, meta.inverted, (380, 228)))
    assert (record.orig_height, record.orig_width) == values.shape
