"""Reading and writing processed images (8/16-bit grayscale PNG) with OpenCV.

Kept separate from DICOM decoding (:mod:`mammoclip.imaging.dicom`): this is the fast path every
dataset uses at training time. Arrays are returned as stored (uint8 or uint16); normalisation to
float happens later, on the device (:func:`mammoclip.data.transforms.normalize_images`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mammoclip.errors import DataError


def read_image(path: str | Path) -> np.ndarray:
    """Read a grayscale PNG/JPEG/TIFF as stored.

    Returns:
        ``(H, W)`` array of dtype uint8 or uint16.

    Raises:
        DataError: naming the file when it is missing or cannot be decoded.
    """
    import cv2

    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"cannot decode image: {path}")
    if img.ndim == 3:  # a colour file: keep one channel (mammograms are grayscale)
        img = img[..., 0]
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    return img


#: PNG encoder settings: zlib level 1, run-length strategy, the ``Sub`` row filter. Measured on
#: 1520 x 912 mammograms (OpenCV 5, one thread): 8-bit 10.6 ms and 0.43 MB per image, against 29.5 ms
#: and 0.53 MB for level 1 with zlib's default strategy and adaptive filters (what passing only a
#: level selects), and 24 ms / 1.85 MB against 80 ms / 1.95 MB at 16 bits. A mammogram's rows are
#: smooth, so ``Sub`` leaves small residuals and long runs, which the RLE strategy packs as well as
#: LZ77 matching at a fraction of the cost. These are OpenCV's own defaults from 4.x on; they are
#: spelled out so that the output does not depend on the installed version.
PNG_PARAMS: tuple[tuple[str, str | int], ...] = (
    ("IMWRITE_PNG_COMPRESSION", 1),
    ("IMWRITE_PNG_STRATEGY", "IMWRITE_PNG_STRATEGY_RLE"),
    ("IMWRITE_PNG_FILTER", "IMWRITE_PNG_FILTER_SUB"),
)


@functools.lru_cache(maxsize=16)
def _png_params(compression: int | None) -> tuple[int, ...]:
    import cv2

    params: list[int] = []
    for key, value in PNG_PARAMS:
        if not hasattr(cv2, key):  # IMWRITE_PNG_FILTER is new in OpenCV 4.11: older ones use their default
            continue
        if key == "IMWRITE_PNG_COMPRESSION" and compression is not None:
            value = compression
        params += [int(getattr(cv2, key)), int(getattr(cv2, value) if isinstance(value, str) else value)]
    return tuple(params)


def write_png(path: str | Path, image: np.ndarray, *, compression: int | None = None) -> Path:
    """Write a 2-D uint8/uint16 array as PNG, atomically (temp file + rename).

    Args:
        compression: zlib level 0-9; default 1 (:data:`PNG_PARAMS`: with the RLE strategy, higher
            levels buy almost nothing on mammograms).
    """
    import cv2

    path = Path(path)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {image.dtype} {image.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image, list(_png_params(compression)))
    if not ok:
        raise DataError(f"PNG encoding failed for {path}")
    return write_bytes_atomic(path, buf.tobytes())


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``<path>.tmp`` + rename: readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
