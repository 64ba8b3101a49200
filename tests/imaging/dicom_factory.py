"""Write synthetic DICOMs with pydicom from numpy arrays, in every variant the reader must handle.

``write_dicom(path, display, ...)``: ``display`` is the intended image (bright = dense, integers in
``[0, 2**bits - 1]``). The factory turns it into stored values for the requested variant so that a
correct reader recovers ``display`` (up to rescale rounding):

* ``photometric="MONOCHROME1"`` stores ``2**bits - 1 - display``;
* ``slope``/``intercept`` store ``(display - intercept) / slope`` (modality LUT);
* ``window=(center, width)`` adds a VOI window; ``voi_lut=True`` a linear VOI LUT sequence over
  the full range instead;
* ``syntax`` in ``uncompressed | rle | j2k | jpegls | jpegll`` picks the transfer syntax. pydicom 3 has
  no encoder for JPEG-LS or JPEG lossless, so both are encoded with imagecodecs: JPEG-LS through
  CharLS (optional, see :func:`jpegls_available`), ``jpegll`` (JPEG Lossless, Non-Hierarchical,
  First-Order Prediction, "Process 14 SV1", the syntax most older mammography archives use) through
  libjpeg-turbo >= 3, whose lossless mode writes predictor 1 at 2-16 bits (see :func:`jpegll_available`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SYNTAXES = ("uncompressed", "rle", "j2k", "jpegls", "jpegll")


def jpegls_available() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.JPEGLS.available)
    except (ImportError, AttributeError):
        return False


@lru_cache(maxsize=1)
def jpegll_available() -> bool:
    """Whether imagecodecs can write JPEG lossless SV1 at 12 and 16 bits.

    Probed by encoding, not by version strings: libjpeg-turbo only gained lossless (and 12/16-bit)
    encoding in 3.0, and imagecodecs may be built against an older libjpeg or without JPEG8.
    """
    try:
        tiny = np.array([[0, 4095], [65535, 1]], dtype=np.uint16)
        return all(jpeg_lossless_predictor(_jpegll_encode(tiny & (2**b - 1), b)) == 1 for b in (12, 16))
    except Exception:  # noqa: BLE001 - missing module, codec, or a libjpeg without lossless support
        return False


def _jpegll_encode(stored: np.ndarray, bits: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits))


def jpeg_lossless_predictor(stream: bytes) -> int | None:
    """The predictor (selection value, ``Ss`` of the scan header) of a lossless JPEG stream.

    None when the stream has no lossless (SOF3) frame. Lets a test check that a fixture really is
    the SV1 transfer syntax it claims: a stream with predictor 6 (what DNG's lossless-JPEG writer in
    imagecodecs emits) would be the more general 1.2.840.10008.1.2.4.57 instead.
    """
    pos, lossless = 2, False  # after SOI
    while pos + 4 <= len(stream) and stream[pos] == 0xFF:
        marker, length = stream[pos + 1], int.from_bytes(stream[pos + 2:pos + 4], "big")
        if marker == 0xC3:
            lossless = True
        elif marker == 0xDA:  # SOS: length, Ns, Ns x (Cs, Td/Ta), Ss, Se, Ah/Al
            return int(stream[pos + 5 + 2 * stream[pos + 4]]) if lossless else None
        pos += 2 + length
    return None


def write_dicom(
    path: str | Path,
    display: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    voi_lut: bool = False,
    syntax: str = "uncompressed",
    bits: int = 16,
    modality: str = "MG",
    laterality: str | None = "L",
    view: str | None = "CC",
    patient_id: str = "P0",
    pixel_data: bool = True,
) -> Path:
    """Write one DICOM; see the module docstring for the variants. Returns the path."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
        generate_uid,
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    maxv = 2**bits - 1
    values = np.asarray(display, dtype=np.float64)
    if photometric == "MONOCHROME1":
        values = maxv - values
    stored = np.rint((values - intercept) / slope)
    if stored.min() < 0 or stored.max() > maxv:
        raise ValueError("rescale pushes values outside the stored range")
    stored = stored.astype(np.uint16 if bits > 8 else np.uint8)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = modality
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
    if voi_lut:
        from pydicom.dataset import Dataset

        item = Dataset()
        n = 4096  # one entry per stored 12-bit value, linear onto 0..65535
        item.LUTDescriptor = [n, 0, 16]
        item.LUTData = np.linspace(0, 65535, n).astype("<u2").tobytes()
        item["LUTData"].VR = "OW"
        item.LUTExplanation = "linear"
        ds.VOILUTSequence = Sequence([item])
    if pixel_data:
        if syntax == "uncompressed":
            ds.PixelData = stored.tobytes()
        elif syntax in ("rle", "j2k"):
            ds.PixelData = stored.tobytes()
            uid = {"rle": RLELossless, "j2k": JPEG2000Lossless}[syntax]
            ds.compress(uid, stored)
        elif syntax == "jpegll":
            # Not skippable: imagecodecs is a test requirement, so a missing encoder is a broken
            # environment, and the decoder path for the most common legacy syntax must be tested.
            if not jpegll_available():
                raise RuntimeError("writing a JPEG lossless (SV1) fixture needs imagecodecs with libjpeg-turbo >= 3 "
                                   "(lossless 12/16-bit encoding); install the test extra: pip install -e '.[test]'")
            ds.PixelData = encapsulate([_jpegll_encode(stored, bits)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        elif syntax == "jpegls":
            import imagecodecs

            ds.PixelData = encapsulate([imagecodecs.jpegls_encode(stored)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        else:
            raise ValueError(f"unknown syntax {syntax!r}; one of {SYNTAXES}")
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom(shape: tuple[int, int] = (400, 256), *, side: str = "left", seed: int = 0,
            label: bool = True, lesion: tuple[int, int, int] | None = (200, 90, 14)) -> np.ndarray:
    """A breast-like 12-bit image: a half-ellipse on the chest-wall side, tissue texture, a label.

    Args:
        lesion: ``(row, col, radius)`` of a bright disc inside the breast (left-side coordinates),
            or None.

    Returns:
        ``(H, W)`` uint16 with background 0 and breast values in ~[600, 4095].
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, ry, rx = h / 2, 0.42 * h, 0.6 * w
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1
    img = np.zeros(shape, dtype=np.float64)
    tissue = 1500 + 800 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 60, shape)
    img[inside] = tissue[inside]
    if lesion is not None:
        r0, c0, rad = lesion
        img[(yy - r0) ** 2 + (xx - c0) ** 2 <= rad**2] = 3800
    img[inside & (xx < 3)] = 4095  # the brightest value sits inside the breast
    if label:  # a burned-in marker far from the breast
        img[int(0.04 * h):int(0.09 * h), int(0.8 * w):int(0.93 * w)] = 4095
    img = np.clip(img, 0, 4095)
    if side == "right":
        img = img[:, ::-1]
    return img.astype(np.uint16)
