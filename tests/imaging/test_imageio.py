"""PNG writing: lossless at 8 and 16 bits, atomic, and the fast encoder settings are really used."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mammoclip.errors import DataError
from mammoclip.imaging.imageio import read_image, write_png
from tests.imaging.dicom_factory import phantom


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_is_lossless(tmp_path: Path, dtype: type) -> None:
    img = phantom((300, 200), side="right", seed=3, lesion=(150, 120, 12)).astype(np.float64)
    img = np.rint(img / img.max() * np.iinfo(dtype).max).astype(dtype)
    path = write_png(tmp_path / "a" / "b.png", img)
    back = read_image(path)
    assert back.dtype == dtype and np.array_equal(back, img)
    assert not path.with_name("b.png.tmp").exists()  # written through a temp file, then renamed


def test_png_settings_compress_a_mammogram_better_than_zlib_defaults(tmp_path: Path) -> None:
    """RLE + Sub filter (our settings) vs level 1 with zlib's default strategy and adaptive filters."""
    img = phantom((600, 400), side="left", seed=1, lesion=(300, 150, 20))
    u8 = np.rint(img / img.max() * 255).astype(np.uint8)
    ours = write_png(tmp_path / "ours.png", u8).stat().st_size
    ok, plain = cv2.imencode(".png", u8, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    assert ours < 0.95 * len(plain), (ours, len(plain))
    # an explicit level still applies: level 0 stores the rows uncompressed
    stored = write_png(tmp_path / "l0.png", u8, compression=0).stat().st_size
    assert stored > u8.size


def test_png_rejects_wrong_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D uint8/uint16"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D uint8/uint16"):
        write_png(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image"):
        read_image(tmp_path / "bad.png")
