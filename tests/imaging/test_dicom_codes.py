"""decode_dicom: integer codes + LUT reproduce read_dicom bit for bit in every value-pipeline variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammoclip.errors import DataError
from mammoclip.imaging.dicom import decode_dicom, read_dicom
from tests.imaging.dicom_factory import phantom, write_dicom

VARIANTS = {
    "plain": ({}, {}),
    "monochrome1": ({"photometric": "MONOCHROME1"}, {}),
    "rescale": ({"slope": 2.0, "intercept": 100.0}, {}),
    "window": ({"window": (1800, 2400)}, {"voi": True}),
    "window_ignored": ({"window": (1800, 2400)}, {"voi": False}),
    "voi_lut": ({"voi_lut": True}, {"voi": True}),
    "mono1_window": ({"photometric": "MONOCHROME1", "window": (2000, 3000)}, {"voi": True}),
    "mono1_not_inverted": ({"photometric": "MONOCHROME1"}, {"invert": False}),
    "rle": ({"syntax": "rle"}, {}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_codes_and_lut_reproduce_read_dicom(tmp_path: Path, name: str) -> None:
    write_kw, read_kw = VARIANTS[name]
    display = phantom((90, 60), seed=1)
    if "slope" in write_kw:
        display = display // 2 * 2 + 100  # representable with slope 2, intercept 100
    path = write_dicom(tmp_path / "x.dcm", display, bits=12, **write_kw)
    values, meta = read_dicom(path, **read_kw)
    codes, lut, meta_codes = decode_dicom(path, **read_kw)
    assert meta_codes == meta
    assert codes.dtype == np.uint16 and codes.shape == values.shape
    mapped = codes.astype(np.float32) if lut is None else lut[codes]
    np.testing.assert_array_equal(mapped, values)  # bit for bit, not approximately
    assert (lut is None) == (name in ("plain", "window_ignored", "rle", "mono1_not_inverted"))


def test_8_bit_codes(tmp_path: Path) -> None:
    display = (phantom((64, 48), seed=2) // 16).astype(np.uint8)
    path = write_dicom(tmp_path / "x.dcm", display, bits=8, photometric="MONOCHROME1")
    codes, lut, _ = decode_dicom(path)
    assert codes.dtype == np.uint8 and lut is not None and lut.shape == (256,)
    np.testing.assert_array_equal(lut[codes], read_dicom(path)[0])


def test_signed_codes_index_by_bit_pattern(tmp_path: Path) -> None:
    import pydicom

    display = np.full((40, 30), 1000, dtype=np.uint16)
    display[:, :10] = 65000  # -536 as int16
    path = write_dicom(tmp_path / "x.dcm", display, bits=16)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1
    ds.save_as(path)
    values, meta = read_dicom(path)
    assert values.min() == -536
    codes, lut, meta_codes = decode_dicom(path)
    assert meta_codes == meta and codes.dtype == np.uint16 and lut is not None
    np.testing.assert_array_equal(lut[codes], values)


def test_errors_are_the_same(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_text("not a dicom")
    with pytest.raises(DataError, match="not a DICOM file"):
        decode_dicom(junk)
    ct = write_dicom(tmp_path / "ct.dcm", phantom((32, 32)), modality="CT")
    with pytest.raises(DataError, match="not a mammogram"):
        decode_dicom(ct)


def test_preferred_decoder_matches_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import JPEG2000Lossless

    import mammoclip.imaging.dicom as dicom

    display = phantom((96, 64), seed=3)
    path = write_dicom(tmp_path / "x.dcm", display, bits=12, syntax="j2k")
    codes, lut, _ = decode_dicom(path)
    assert lut is None
    np.testing.assert_array_equal(codes, display)
    for plugin in get_decoder(JPEG2000Lossless).available_plugins:
        np.testing.assert_array_equal(codes, pixel_array(path, decoding_plugin=plugin))
    monkeypatch.setattr(dicom, "PREFERRED_DECODER", "no-such-plugin")  # falls back to every plugin
    np.testing.assert_array_equal(decode_dicom(path)[0], display)
