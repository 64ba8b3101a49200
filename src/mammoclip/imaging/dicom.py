"""Read one mammography DICOM into a pixel array plus the metadata the pipeline needs.

Decoding goes through pydicom 3, whose decoders try every installed plugin in turn (pylibjpeg with
its libjpeg/openjpeg/rle back-ends, python-gdcm, Pillow), so JPEG lossless, JPEG-LS, JPEG 2000 and RLE
files decode on the CPU without a GPU library (the original needed NVIDIA DALI for JPEG 2000,
docs/original.md §1). The value pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT
(rescale slope/intercept) -> optional VOI LUT (LUT sequence or window centre/width) -> MONOCHROME1
inversion. Values are kept in float32 throughout (exact for 16-bit data), so nothing wraps around
(the original copied uint16 into int16, docs/original.md §1 "RSNA").

Layer 0: numpy and pydicom only (pydicom imported lazily), no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.errors import DataError

#: Modalities accepted by default: digital mammography (MG). Anything else is a clear error.
ACCEPTED_MODALITIES: tuple[str, ...] = ("MG",)

# Tokens of free-text header fields that name laterality and view (e.g. CBIS-DDSM puts
# "Mass-Test_P_00173_LEFT_CC" in PatientID and leaves the laterality/view tags empty).
_LATERALITY_TOKENS = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_VIEW_TOKENS = ("XCCL", "XCCM", "LMO", "MLO", "CC", "ML", "LM", "AT")
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML",
                  "latero-medial": "LM", "latero-medial oblique": "LMO", "axillary tail": "AT",
                  "exaggerated cranio-caudal": "XCCL"}


@dataclass(frozen=True)
class DicomMeta:
    """Header facts of one DICOM file.

    ``value_range`` is the range the returned pixel values can take (after modality/VOI LUT), used
    for MONOCHROME1 inversion and for scaling to [0, 1]; ``has_voi`` says whether the file carries
    a VOI LUT sequence or a window centre/width.
    """

    path: str
    rows: int
    columns: int
    photometric: str
    modality: str
    transfer_syntax: str
    bits_stored: int
    laterality: str | None
    view: str | None
    patient_id: str | None
    study_id: str | None
    image_id: str | None
    has_voi: bool
    value_range: tuple[float, float]

    @property
    def inverted(self) -> bool:
        """True when stored values are dark-is-dense (MONOCHROME1)."""
        return self.photometric == "MONOCHROME1"


def _tokens(*texts: Any) -> list[str]:
    out: list[str] = []
    for text in texts:
        if text:
            out.extend(t for t in re.split(r"[^A-Z0-9]+", str(text).upper()) if t)
    return out


def _laterality(ds: Any) -> str | None:
    for tag in ("ImageLaterality", "Laterality", "FrameLaterality"):
        value = str(ds.get(tag, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    for tok in _tokens(ds.get("SeriesDescription"), ds.get("PatientID"), ds.get("ProtocolName"),
                       ds.get("StudyDescription")):
        if tok in _LATERALITY_TOKENS:
            return _LATERALITY_TOKENS[tok]
        for view in _VIEW_TOKENS:  # "LCC", "RMLO"
            if tok in (f"L{view}", f"R{view}"):
                return tok[0]
    return None


def _view(ds: Any) -> str | None:
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value in _VIEW_TOKENS:
        return value
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    for tok in _tokens(ds.get("SeriesDescription"), ds.get("PatientID"), ds.get("ProtocolName"),
                       ds.get("PatientOrientation") if isinstance(ds.get("PatientOrientation"), str) else None):
        for view in _VIEW_TOKENS:
            if tok in (view, f"L{view}", f"R{view}"):
                return view
    return None


def _read_dataset(path: Path, *, stop_before_pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a DICOM file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise DataError(f"{path}: not a DICOM file ({err})") from err
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: cannot read DICOM header, the file may be truncated ({err})") from err


def _meta(path: Path, ds: Any, value_range: tuple[float, float]) -> DicomMeta:
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    return DicomMeta(
        path=str(path),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        transfer_syntax=tsyntax,
        bits_stored=int(ds.get("BitsStored", 16) or 16),
        laterality=_laterality(ds),
        view=_view(ds),
        patient_id=str(ds.PatientID) if ds.get("PatientID") else None,
        study_id=str(ds.StudyInstanceUID) if ds.get("StudyInstanceUID") else None,
        image_id=str(ds.SOPInstanceUID) if ds.get("SOPInstanceUID") else None,
        has_voi=bool(ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds)),
        value_range=value_range,
    )


def _check_modality(path: Path, ds: Any, modalities: tuple[str, ...] | None) -> None:
    if modalities is None:
        return
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in modalities:
        raise DataError(f"{path}: modality {modality or '(missing)'!r} is not a mammogram "
                        f"(expected one of {list(modalities)})")


def read_dicom_header(path: str | Path, *, modalities: tuple[str, ...] | None = ACCEPTED_MODALITIES) -> DicomMeta:
    """Read only the header (fast: pixel data is not loaded).

    Raises:
        DataError: file missing, not DICOM, truncated header or wrong modality.
    """
    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=True)
    _check_modality(path, ds, modalities)
    return _meta(path, ds, (0.0, float(2 ** int(ds.get("BitsStored", 16) or 16) - 1)))


def _stored_range(ds: Any) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


#: Decoder plugin tried first when it can decode the transfer syntax. pylibjpeg (OpenJPEG) decodes
#: JPEG 2000 on one thread with ~35 % less CPU time than python-gdcm, which pydicom would otherwise
#: pick first and which spreads one image over ~1.6 cores (3328x2560 lossless: 0.53 s CPU vs 0.80 s
#: for about the same wall time on an idle 2-core machine). With one worker per core, CPU time is
#: what counts, and a multi-threaded decoder would oversubscribe the cores. Lossless: same values.
PREFERRED_DECODER: str = "pylibjpeg"


def _fast_pixel_array(ds: Any, tsyntax: Any) -> np.ndarray | None:
    """Decode with :data:`PREFERRED_DECODER`; None when it does not apply or fails.

    A failure here is not final: the caller then lets pydicom try every installed plugin, which
    keeps the fallbacks (and their error messages) for files this one plugin cannot read.
    """
    from pydicom.pixels import get_decoder

    try:
        if tsyntax is None or PREFERRED_DECODER not in get_decoder(tsyntax).available_plugins:
            return None
        ds.pixel_array_options(decoding_plugin=PREFERRED_DECODER)
        return np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001 - any decoder failure: fall back to pydicom's full plugin list
        return None
    finally:
        ds.pixel_array_options(decoding_plugin="")


def _check_decoder(path: Path, tsyntax: Any) -> None:
    """Fail early, on one line, when the syntax has decoders but none of their packages is installed.

    pydicom reports this as a multi-line RuntimeError listing every plugin's dependencies; a batch
    log (``failures.csv``) wants one line that says what to install.
    """
    from pydicom.pixels import get_decoder

    if tsyntax is None or not getattr(tsyntax, "is_encapsulated", False):
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return  # no plugin exists at all for this syntax: reported by the decode step
    if not decoder.is_available:
        missing = "; ".join(" ".join(str(m).split()) for m in decoder.missing_dependencies)
        raise DataError(f"{path}: no decoder for transfer syntax {tsyntax.name!r}; install the pylibjpeg "
                        f"plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle) or python-gdcm "
                        f"(missing: {missing})")


def _decode(path: Path, modalities: tuple[str, ...] | None) -> tuple[Any, np.ndarray]:
    """Read, check and decode one file: the dataset and its stored values (any integer dtype)."""
    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=False)
    _check_modality(path, ds, modalities)
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(f"{path}: colour DICOM ({ds.get('PhotometricInterpretation')}) is not a mammogram")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    _check_decoder(path, tsyntax)
    try:
        stored = _fast_pixel_array(ds, tsyntax)
        if stored is None:
            stored = ds.pixel_array
    except NotImplementedError as err:
        name = getattr(tsyntax, "name", str(tsyntax))
        raise DataError(f"{path}: no decoder for transfer syntax {name!r}: no installable plugin reads it; "
                        "convert the file (e.g. `gdcmconv --raw` or `dcmdjpeg`) to an uncompressed or "
                        "JPEG/JPEG 2000/RLE syntax") from err
    except RuntimeError as err:
        name = getattr(tsyntax, "name", str(tsyntax))
        raise DataError(f"{path}: cannot decode pixel data ({name}): {err}") from err
    except (ValueError, EOFError, OSError, KeyError, AttributeError, TypeError) as err:
        raise DataError(f"{path}: cannot decode pixel data, the file may be truncated ({err})") from err
    if stored.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale image, got shape {stored.shape}")
    return ds, stored


def _values(ds: Any, stored: np.ndarray, *, voi: bool, invert: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """Stored values -> float32 pixel values (modality LUT, VOI, inversion) and their range.

    Every step is elementwise, so applying this to all possible codes gives a LUT that reproduces
    it exactly (:func:`decode_dicom`).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    lo, hi = _stored_range(ds)
    # Push the extremes of the stored range through the same LUTs: the result is the range the
    # output can take (monotonic LUTs), needed for inversion and for scaling.
    probe = np.array([lo, hi], dtype=np.float64)
    values = apply_modality_lut(stored, ds)
    probe = np.asarray(apply_modality_lut(probe, ds), dtype=np.float64)
    if voi and ("VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)):
        # A LUT sequence indexes by integer input values; a window is a formula on floats.
        as_type = np.int64 if "VOILUTSequence" in ds else np.float64
        values = apply_voi_lut(np.rint(values).astype(as_type), ds, prefer_lut=True)
        probe = np.asarray(apply_voi_lut(np.rint(probe).astype(as_type), ds, prefer_lut=True), dtype=np.float64)
    image = np.asarray(values, dtype=np.float32)
    vlo, vhi = float(probe.min()), float(probe.max())
    if invert and str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        image = np.float32(vlo + vhi) - image
    return image, (vlo, vhi)


def read_dicom(
    path: str | Path,
    *,
    voi: bool = False,
    invert: bool = True,
    modalities: tuple[str, ...] | None = ACCEPTED_MODALITIES,
) -> tuple[np.ndarray, DicomMeta]:
    """Decode one single-frame grayscale DICOM.

    Args:
        path: The DICOM file.
        voi: Apply the VOI LUT (LUT sequence, else window centre/width) when the file has one.
        invert: Turn MONOCHROME1 (dark is dense) into MONOCHROME2 as ``lo + hi - x`` over
            :attr:`DicomMeta.value_range`, so that bright means dense for every file.
        modalities: Accepted ``Modality`` values; ``None`` accepts anything.

    Returns:
        ``(H, W)`` float32 array after the modality LUT (and VOI LUT when asked), and the metadata.
        ``meta.value_range`` is the range of values the array can hold.

    Raises:
        DataError: naming the file and the problem (not DICOM, truncated, no pixel data, wrong
            modality, no decoder for the transfer syntax, multi-frame or colour image).
    """
    path = Path(path)
    ds, stored = _decode(path, modalities)
    image, value_range = _values(ds, stored, voi=voi, invert=invert)
    return image, _meta(path, ds, value_range)


#: Stored dtypes :func:`decode_dicom` keeps as codes: every possible value fits a small LUT.
_CODE_DTYPES: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.uint8): np.dtype(np.uint8), np.dtype(np.int8): np.dtype(np.uint8),
    np.dtype(np.uint16): np.dtype(np.uint16), np.dtype(np.int16): np.dtype(np.uint16),
}


def decode_dicom(
    path: str | Path,
    *,
    voi: bool = False,
    invert: bool = True,
    modalities: tuple[str, ...] | None = ACCEPTED_MODALITIES,
) -> tuple[np.ndarray, np.ndarray | None, DicomMeta]:
    """Like :func:`read_dicom`, but without converting the full frame to float.

    A mammogram is 8-17 MP; turning every stored value into float32 (and through rescale, VOI and
    inversion) costs about as much as decoding an uncompressed file, while the pipeline only needs
    values for a subsampled copy and the breast crop. So the stored values come back as integer
    *codes* plus a LUT over all 2**8 or 2**16 codes, built by running the exact per-pixel pipeline
    of :func:`read_dicom` on every code: ``lut[codes]`` equals ``read_dicom(...)[0]`` bit for bit.

    Returns:
        ``(codes, lut, meta)``. ``lut`` is None when the values are the codes themselves (no
        rescale, VOI or inversion: the common raw mammogram), so ``codes`` can be used directly.
        Stored types other than 8/16-bit integers come back as float32 values with ``lut=None``.

    Raises:
        DataError: as :func:`read_dicom`.
    """
    path = Path(path)
    ds, stored = _decode(path, modalities)
    code_type = _CODE_DTYPES.get(stored.dtype)
    if code_type is None:
        image, value_range = _values(ds, stored, voi=voi, invert=invert)
        return image, None, _meta(path, ds, value_range)
    all_codes = np.arange(2 ** (8 * code_type.itemsize), dtype=code_type).view(stored.dtype)
    lut, value_range = _values(ds, all_codes, voi=voi, invert=invert)
    codes = stored.view(code_type)  # signed values index the LUT through their bit pattern
    if stored.dtype == code_type and np.array_equal(lut, all_codes.astype(np.float32)):
        return codes, None, _meta(path, ds, value_range)
    return codes, np.ascontiguousarray(lut, dtype=np.float32), _meta(path, ds, value_range)
