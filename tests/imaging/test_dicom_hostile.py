"""Hostile DICOMs: every malformed file fails with one coded, one-line ImageError, fast and without decoding.

The ``hostile_*`` writers are shared with ``tests/data/test_preprocess_hostile.py`` (the same files in
a batch). Each is a small file a fuzzer found a crash, hang or silent wrong output with.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mammoclip.errors import DataError, ImageError
from mammoclip.imaging import failures as fc
from mammoclip.imaging.dicom import DecodeLimits, check_file, decode_dicom, read_dicom, read_dicom_header
from tests.imaging.dicom_factory import phantom, write_dicom

IMG = phantom((120, 80))


def _edit(path: Path, **fields: Any) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def _patch_bytes(path: Path, find: bytes, offset: int, new: bytes) -> Path:
    data = path.read_bytes()
    at = data.index(find) + offset
    path.write_bytes(data[:at] + new + data[at + len(new):])
    return path


def hostile_multi_rows(path: Path) -> Path:
    return _edit(write_dicom(path, IMG, bits=12), Rows=[120, 120])


def hostile_bits_stored(path: Path) -> Path:
    return _edit(write_dicom(path, IMG, bits=12), BitsStored=200)


def hostile_unknown_vr(path: Path) -> Path:
    """ImageLaterality (0020,0062) with the VR ``ZZ``: pydicom raises NotImplementedError on access."""
    return _patch_bytes(write_dicom(path, IMG, bits=12), b"\x20\x00\x62\x00CS", 4, b"ZZ")


def hostile_rows_length(path: Path) -> Path:
    """Rows (US) with a 3-byte length: pydicom raises a BytesLengthException on access."""
    return _patch_bytes(write_dicom(path, IMG, bits=12), b"\x28\x00\x10\x00US", 6, b"\x03\x00")


def hostile_truncated_deflate(path: Path) -> Path:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    full = write_dicom(path, IMG, bits=12)
    import pydicom

    ds = pydicom.dcmread(full)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(full)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    return full


def hostile_deflate_bomb(path: Path, inflated: int = 40 << 20) -> Path:
    """A valid deflated DICOM whose dataset hides ``inflated`` bytes of zeros (~1000x compression)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(write_dicom(path, IMG, bits=12))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new(0x00091010, "OB", bytes(inflated))
    ds.save_as(path)
    return path


def hostile_huge(path: Path) -> Path:
    """A 40 kB file declaring 60000 x 60000 16-bit pixels (7 GB)."""
    return _edit(write_dicom(path, IMG, bits=12), Rows=60000, Columns=60000)


def hostile_ratio(path: Path) -> Path:
    """RLE pixel data of a few kB declaring 8000 x 8000 (within the pixel budget, not the ratio bound)."""
    return _edit(write_dicom(path, IMG, bits=12, syntax="rle"), Rows=8000, Columns=8000)


def hostile_nan_slope(path: Path) -> Path:
    return _edit(write_dicom(path, IMG, bits=12), RescaleSlope="nan", RescaleIntercept="0")


def hostile_inf_intercept(path: Path) -> Path:
    return _edit(write_dicom(path, IMG, bits=12), RescaleSlope="1", RescaleIntercept="inf")


def hostile_zero_slope(path: Path) -> Path:
    return _edit(write_dicom(path, IMG, bits=12), RescaleSlope="0", RescaleIntercept="100")


#: writer -> the code its file must fail with.
HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "multi_rows": (hostile_multi_rows, fc.BAD_HEADER),
    "bits_stored": (hostile_bits_stored, fc.BAD_HEADER),
    "unknown_vr": (hostile_unknown_vr, fc.BAD_HEADER),
    "rows_length": (hostile_rows_length, fc.BAD_HEADER),
    "truncated_deflate": (hostile_truncated_deflate, fc.BAD_HEADER),
    "huge": (hostile_huge, fc.TOO_LARGE),
    "ratio": (hostile_ratio, fc.TOO_LARGE),
    "nan_slope": (hostile_nan_slope, fc.NONFINITE_LUT),
    "inf_intercept": (hostile_inf_intercept, fc.NONFINITE_LUT),
    "zero_slope": (hostile_zero_slope, fc.NONFINITE_LUT),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_fails_with_its_code(tmp_path: Path, name: str) -> None:
    writer, code = HOSTILE[name]
    path = writer(tmp_path / f"{name}.dcm")
    for decode in (read_dicom, decode_dicom):
        with pytest.raises(ImageError) as err:
            decode(path)
        assert err.value.code == code, str(err.value)
        assert isinstance(err.value, DataError)  # every caller that catches DataError keeps working
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) <= fc.MAX_REASON_CHARS


@pytest.mark.parametrize("name", ["multi_rows", "bits_stored", "unknown_vr", "rows_length", "truncated_deflate"])
def test_header_reader_codes_malformed_headers(tmp_path: Path, name: str) -> None:
    """The folder adapter's reader: only ImageError, never pydicom's own exception types."""
    path = HOSTILE[name][0](tmp_path / f"{name}.dcm")
    with pytest.raises(ImageError) as err:
        read_dicom_header(path)
    assert err.value.code == fc.BAD_HEADER


def _decode_huge_in_child(path: str) -> tuple[str, int, int]:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decode_dicom(path)
    except ImageError as err:
        return err.code, start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "decoded", start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_huge_declared_size_fails_before_any_allocation(tmp_path: Path) -> None:
    path = hostile_huge(tmp_path / "huge.dcm")
    assert path.stat().st_size < 100_000
    with ProcessPoolExecutor(max_workers=1) as pool:  # a fresh process: its peak RSS is this call's
        code, start_kb, peak_kb = pool.submit(_decode_huge_in_child, str(path)).result()
    assert code == fc.TOO_LARGE
    assert peak_kb - start_kb < 64 * 1024  # not one 7 GB buffer, nor a 128 MB one


def test_budget_is_configurable(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", IMG, bits=12)  # 120 x 80 = 9600 pixels
    with pytest.raises(ImageError, match="over the budget of 9599 pixels") as err:
        read_dicom(path, limits=DecodeLimits(max_pixels=9599))
    assert err.value.code == fc.TOO_LARGE
    assert read_dicom(path, limits=DecodeLimits(max_pixels=9600))[0].shape == (120, 80)
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeLimits(max_pixels=0)


def test_deflate_bomb_fails_before_pydicom_inflates_it(tmp_path: Path) -> None:
    path = hostile_deflate_bomb(tmp_path / "bomb.dcm")  # 40 MB of zeros in a ~50 kB file
    assert path.stat().st_size < 1 << 20
    small = DecodeLimits(max_pixels=1 << 20)  # 2 MB of pixels + 16 MB of header allowed
    with pytest.raises(ImageError, match="deflated dataset inflates beyond 18 MiB") as err:
        read_dicom_header(path, limits=small)  # header-only reads inflate the whole dataset in pydicom, too
    assert err.value.code == fc.TOO_LARGE
    with pytest.raises(ImageError, match="deflated dataset inflates beyond") as err:
        read_dicom(path, limits=small)
    assert err.value.code == fc.TOO_LARGE
    # within the byte cap, the ratio bound (~800x here) still refuses it
    with pytest.raises(ImageError, match=r"inflates \d+x \(over the 100x bound\)") as err:
        read_dicom(path, limits=DecodeLimits(max_ratio=100))
    assert err.value.code == fc.TOO_LARGE
    assert read_dicom(path, limits=DecodeLimits(max_ratio=5000))[0].shape == (120, 80)


def test_a_valid_deflated_file_still_decodes(tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = write_dicom(tmp_path / "d.dcm", IMG, bits=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    np.testing.assert_array_equal(read_dicom(path)[0], IMG)
    # bytes after the end of the deflate stream (padding, junk) once made the budget check loop forever
    path.write_bytes(path.read_bytes() + b"\x00junk")
    np.testing.assert_array_equal(read_dicom(path, limits=DecodeLimits(max_ratio=1.5))[0], IMG)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_special_files_are_refused_without_opening(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.dcm"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block until a writer appears: forever
    else:
        path.mkdir()
    start = time.monotonic()
    for call in (check_file, read_dicom, read_dicom_header):
        with pytest.raises(ImageError, match="not a DICOM file") as err:
            call(path)
        assert err.value.code == fc.NOT_A_FILE
    assert time.monotonic() - start < 30  # a hang would never get here; not a speed check


def test_missing_file_code(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found") as err:
        read_dicom(tmp_path / "nope.dcm")
    assert err.value.code == fc.MISSING_FILE


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("width", ["nan", "inf", "0", "-5", "0.5"])
def test_unusable_window_is_ignored_not_applied(tmp_path: Path, width: str) -> None:
    """The repair rule: a window that cannot be applied is dropped; values are those without VOI."""
    path = _edit(write_dicom(tmp_path / "w.dcm", IMG, bits=12, window=(1000, 400)), WindowWidth=width)
    image, meta = read_dicom(path, voi=True)
    assert not meta.has_voi
    np.testing.assert_array_equal(image, IMG.astype(np.float32))
    codes, lut, _ = decode_dicom(path, voi=True)
    assert lut is None and np.array_equal(codes, IMG)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_nan_window_center_and_unknown_function_are_ignored(tmp_path: Path) -> None:
    nan_center = _edit(write_dicom(tmp_path / "c.dcm", IMG, bits=12, window=(1000, 400)), WindowCenter="nan")
    assert not read_dicom(nan_center, voi=True)[1].has_voi
    func = _edit(write_dicom(tmp_path / "f.dcm", IMG, bits=12, window=(1000, 400)), VOILUTFunction="CUBIC")
    assert not read_dicom(func, voi=True)[1].has_voi
    good = write_dicom(tmp_path / "g.dcm", IMG, bits=12, window=(1000, 400))
    assert read_dicom(good, voi=True)[1].has_voi  # a usable window is still applied


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException: a BaseException, not an Exception."""


def test_decoder_panic_becomes_decode_panic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.dataset import Dataset

    def panic(self: Dataset) -> np.ndarray:
        raise FakePanic("called `Option::unwrap()` on a `None` value\nat src/lib.rs:42")

    monkeypatch.setattr(Dataset, "pixel_array", property(panic))
    path = write_dicom(tmp_path / "x.dcm", IMG, bits=12, syntax="rle")
    with pytest.raises(ImageError, match="FakePanic: called `Option::unwrap") as err:
        read_dicom(path)
    assert err.value.code == fc.DECODE_PANIC and "\n" not in str(err.value)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupts_are_never_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        interrupt: type[BaseException]) -> None:
    from pydicom.dataset import Dataset

    def stop(self: Dataset) -> np.ndarray:
        raise interrupt()

    monkeypatch.setattr(Dataset, "pixel_array", property(stop))
    with pytest.raises(interrupt):
        read_dicom(write_dicom(tmp_path / "x.dcm", IMG, bits=12, syntax="rle"))


def test_decoder_error_is_decode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    from pydicom.dataset import Dataset

    def broken(self: Dataset) -> np.ndarray:
        raise struct.error("unpack_from requires a buffer of at least 131070 bytes")

    monkeypatch.setattr(Dataset, "pixel_array", property(broken))
    with pytest.raises(ImageError, match="error: unpack_from requires") as err:
        read_dicom(write_dicom(tmp_path / "x.dcm", IMG, bits=12))
    assert err.value.code == fc.DECODE_ERROR


def test_failure_helpers() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert fc.describe_exception(Hostile()) == "Hostile: (unprintable)"
    assert fc.describe_exception(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert fc.one_line("x" * 1000, 10) == "x" * 9 + "…"
    assert fc.failure_code(ImageError("m", fc.TOO_LARGE)) == fc.TOO_LARGE
    assert fc.failure_code(DataError("m")) == fc.PROCESS_ERROR
    import pickle

    copy = pickle.loads(pickle.dumps(ImageError("f: m", fc.NOT_MG)))
    assert (str(copy), copy.code) == ("f: m", fc.NOT_MG)
    with pytest.raises(ValueError, match="already registered"):
        fc.register_failure_code("TOO_LARGE", "something else")
    assert all(code.code == name and code.message for name, code in fc.FAILURE_CODES.items())
