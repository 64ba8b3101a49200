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

import math
import os
import re
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.errors import ImageError
from mammoclip.imaging import failures as fc

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
    #: PatientOrientation (0020,0020) as given, e.g. ("A", "R"); None when absent. Decides the
    #: chest-wall side (mammoclip.imaging.breast.chest_wall_from_header).
    patient_orientation: tuple[str, ...] | None = None
    #: ImageLaterality (0020,0062), else Laterality (0020,0060), exactly as the tags say ("L"/"R");
    #: unlike ``laterality`` never guessed from free text.
    image_laterality: str | None = None
    #: SeriesInstanceUID and AccessionNumber (stripped; None when absent or unreadable): the folder adapter
    #: groups and finds reports by them, from this one header read.
    series_id: str | None = None
    accession: str | None = None
    #: JPEG 2000 resolution levels dropped while decoding (:func:`decode_dicom`'s ``reduce``): the
    #: array holds ``rows // 2**reduce`` x ``columns // 2**reduce`` pixels; 0 for a full decode.
    reduce: int = 0

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


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost before it is decoded: checked on the header, so a hostile file fails fast.

    The largest real mammograms are about 5000 x 6000 at 16 bits (60 MB); the default pixel budget,
    8192 x 8192 (64 MP, 128 MB at 16 bits), leaves headroom for them while a file declaring
    60000 x 60000 (7 GB) is refused before any buffer is allocated.

    Attributes:
        max_pixels: Largest Rows x Columns x SamplesPerPixel x NumberOfFrames accepted; the byte
            budget is this many 16-bit values (BitsAllocated counted).
        max_ratio: Largest declared-size / stored-size ratio of compressed pixel data and of a
            deflated dataset, applied once the declared size exceeds :data:`RATIO_FLOOR_BYTES`
            (lossless mammograms compress 2-4x, lossy ones rarely beyond 100x).
    """

    max_pixels: int = 8192 * 8192
    max_ratio: float = 1000.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_pixels, int) and self.max_pixels >= 1):
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if not (math.isfinite(self.max_ratio) and self.max_ratio >= 1):
            raise ValueError(f"max_ratio must be a finite number >= 1, got {self.max_ratio!r}")

    @property
    def max_bytes(self) -> int:
        """The byte budget of the decoded pixel data: ``max_pixels`` 16-bit values."""
        return 2 * self.max_pixels


DEFAULT_LIMITS = DecodeLimits()
#: Declared sizes below this are never refused for their compression ratio: small images of one
#: value compress by any factor, and at this size they cannot exhaust memory.
RATIO_FLOOR_BYTES: int = 16 << 20
#: Bytes a file (or an inflated dataset) may hold beyond its pixel budget: header, overlays, icons.
HEADER_SLACK_BYTES: int = 16 << 20


def _fail(path: Path, code: str, problem: str) -> ImageError:
    return ImageError(fc.one_line(f"{path}: {problem}"), code)


def check_file(path: str | Path) -> os.stat_result:
    """``stat`` a path and refuse anything but a regular file, without opening it.

    A FIFO named ``*.dcm`` would block ``open`` forever; a device or socket is no image either.

    Raises:
        ImageError: ``MISSING_FILE`` or ``NOT_A_FILE``.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(path, fc.MISSING_FILE, "file not found") from None
    except OSError as err:  # a dangling link loop, a permission problem on a parent folder
        raise _fail(path, fc.MISSING_FILE, f"cannot stat the file ({fc.describe_exception(err)})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("is a folder, not a DICOM file" if stat.S_ISDIR(st.st_mode) else
                "is a FIFO (named pipe), not a DICOM file" if stat.S_ISFIFO(st.st_mode) else
                "is a socket, not a DICOM file" if stat.S_ISSOCK(st.st_mode) else
                "is a device, not a DICOM file" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "is not a regular file")
        raise _fail(path, fc.NOT_A_FILE, kind)
    return st


def _deflated_start(path: Path) -> int | None:
    """Offset of the deflated dataset (after the file meta group), or None when not deflated.

    Read by hand from the group length because pydicom inflates the whole dataset in one call,
    with no bound, as soon as it opens such a file (header-only reads included).
    """
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as fp:
        head = fp.read(144)
        if len(head) < 144 or head[128:132] != b"DICM":
            return None  # pydicom reports what is wrong
        if head[132:138] != b"\x02\x00\x00\x00UL":
            return None
        group_length = int.from_bytes(head[140:144], "little")
        meta = fp.read(group_length)
    if DeflatedExplicitVRLittleEndian.encode() not in meta:
        return None
    return 144 + group_length


def _check_deflate(path: Path, size: int, limits: DecodeLimits) -> None:
    """Inflate a deflated dataset in bounded steps, counting bytes only: a deflate bomb fails TOO_LARGE."""
    start = _deflated_start(path)
    if start is None:
        return
    cap = limits.max_bytes + HEADER_SLACK_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as fp:
        fp.seek(start)
        while not inflater.eof and (chunk := fp.read(1 << 16)):
            while chunk and not inflater.eof:  # after the end, trailing bytes (padding) stay unconsumed
                try:
                    total += len(inflater.decompress(chunk, 1 << 22))
                except zlib.error as err:
                    raise _fail(path, fc.BAD_HEADER, f"deflated dataset is corrupt ({err})") from None
                chunk = inflater.unconsumed_tail
                if total > cap:
                    raise _fail(path, fc.TOO_LARGE, f"deflated dataset inflates beyond {cap >> 20} MiB "
                                "(pixel budget plus header); not read")
    stored = max(1, size - start)
    if total > RATIO_FLOOR_BYTES and total / stored > limits.max_ratio:
        raise _fail(path, fc.TOO_LARGE, f"deflated dataset inflates {total / stored:.0f}x "
                    f"(over the {limits.max_ratio:g}x bound); not read")


def _read_dataset(path: Path, *, stop_before_pixels: bool, limits: DecodeLimits | None = DEFAULT_LIMITS) -> Any:
    """Open one DICOM after the checks that need no parsing: file type, file size, deflate budget."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    st = check_file(path)
    if limits is not None and not stop_before_pixels and st.st_size > limits.max_bytes + HEADER_SLACK_BYTES:
        raise _fail(path, fc.TOO_LARGE, f"file of {st.st_size >> 20} MiB is over the pixel budget "
                    f"({limits.max_pixels} pixels at 16 bits); not read")
    try:
        if limits is not None:
            _check_deflate(path, st.st_size, limits)
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except ImageError:
        raise
    except InvalidDicomError as err:
        raise _fail(path, fc.NOT_DICOM, f"not a DICOM file ({err})") from None
    except MemoryError:
        raise _fail(path, fc.TOO_LARGE, "out of memory while reading the header") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on a malformed header
        raise _fail(path, fc.BAD_HEADER, "cannot read DICOM header, the file may be truncated or malformed "
                    f"({fc.describe_exception(err)})") from None


def _single_int(path: Path, ds: Any, keyword: str, default: int | None, lo: int, hi: int) -> int:
    """One integer header value within ``[lo, hi]``; anything else (multi-valued, text, absurd) is BAD_HEADER."""
    try:
        value = ds.get(keyword, None)
    except Exception as err:  # noqa: BLE001 - the element is converted from raw bytes on access
        raise _fail(path, fc.BAD_HEADER, f"{keyword} cannot be read ({fc.describe_exception(err)})") from None
    if value is None or value == "":
        if default is None:
            raise _fail(path, fc.BAD_HEADER, f"{keyword} is missing")
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        raise _fail(path, fc.BAD_HEADER, f"{keyword} has {len(value)} values, expected one")
    try:
        number = int(value)
    except Exception as err:  # noqa: BLE001 - a string, float NaN, bytes: all the same defect
        raise _fail(path, fc.BAD_HEADER, f"{keyword} is not an integer ({fc.describe_exception(err)})") from None
    if not lo <= number <= hi:
        raise _fail(path, fc.BAD_HEADER, f"{keyword} {number} is outside [{lo}, {hi}]")
    return number


def _check_header(path: Path, ds: Any, limits: DecodeLimits | None) -> None:
    """Check the image-geometry header fields, and the declared size against ``limits``, before decoding."""
    rows = _single_int(path, ds, "Rows", 0, 0, 65535)
    cols = _single_int(path, ds, "Columns", 0, 0, 65535)
    allocated = _single_int(path, ds, "BitsAllocated", 16, 1, 64)
    _single_int(path, ds, "BitsStored", min(16, allocated), 1, allocated)
    samples = _single_int(path, ds, "SamplesPerPixel", 1, 1, 4)
    frames = _single_int(path, ds, "NumberOfFrames", 1, 1, 2**31 - 1)
    if limits is None:
        return
    pixels = rows * cols * samples * frames
    nbytes = pixels * ((allocated + 7) // 8)
    if pixels > limits.max_pixels or nbytes > limits.max_bytes:
        raise _fail(path, fc.TOO_LARGE, f"declared image {rows}x{cols}x{samples}x{frames} frames at {allocated} "
                    f"bits ({nbytes >> 20} MiB) is over the budget of {limits.max_pixels} pixels; not decoded")
    try:
        element = ds["PixelData"] if "PixelData" in ds else None
        stored = len(element.value) if element is not None and element.value is not None else 0
    except Exception:  # noqa: BLE001 - unreadable pixel element: the decode step reports it
        return
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if stored and getattr(tsyntax, "is_encapsulated", False) and nbytes > RATIO_FLOOR_BYTES \
            and nbytes / stored > limits.max_ratio:
        raise _fail(path, fc.TOO_LARGE, f"{stored} bytes of compressed pixel data declare {nbytes >> 20} MiB "
                    f"({nbytes / stored:.0f}x, over the {limits.max_ratio:g}x bound); not decoded")


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
        patient_orientation=tuple(str(v) for v in ds.get("PatientOrientation") or ()) or None
        if not isinstance(ds.get("PatientOrientation"), str) else (str(ds.PatientOrientation),),
        image_laterality=next((v for v in (str(ds.get(t, "") or "").strip().upper()
                                           for t in ("ImageLaterality", "Laterality")) if v in ("L", "R")), None),
        series_id=_optional_text(ds, "SeriesInstanceUID"),
        accession=_optional_text(ds, "AccessionNumber"),
    )


def _optional_text(ds: Any, keyword: str) -> str | None:
    """A text element stripped, or None when absent, empty or malformed (it only helps grouping)."""
    try:
        return str(ds.get(keyword, "") or "").strip() or None
    except Exception:  # noqa: BLE001 - a malformed element raises on access
        return None


def _check_modality(path: Path, ds: Any, modalities: tuple[str, ...] | None) -> None:
    if modalities is None:
        return
    try:
        modality = str(ds.get("Modality", "") or "").strip().upper()
    except Exception as err:  # noqa: BLE001 - a malformed element raises on access
        raise _fail(path, fc.BAD_HEADER, f"Modality cannot be read ({fc.describe_exception(err)})") from None
    if modality not in modalities:
        raise _fail(path, fc.NOT_MG, f"modality {modality or '(missing)'!r} is not a mammogram "
                    f"(expected one of {list(modalities)})")


def _safe_meta(path: Path, ds: Any, value_range: tuple[float, float]) -> DicomMeta:
    """:func:`_meta`, with any error of a malformed element (raised on first access) as BAD_HEADER."""
    try:
        return _meta(path, ds, value_range)
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - unknown VRs, bad lengths, undecodable text: all header defects
        raise _fail(path, fc.BAD_HEADER, f"cannot read the header fields ({fc.describe_exception(err)})") from None


def read_dicom_header(path: str | Path, *, modalities: tuple[str, ...] | None = ACCEPTED_MODALITIES,
                      limits: DecodeLimits = DEFAULT_LIMITS) -> DicomMeta:
    """Read only the header (fast: pixel data is not loaded).

    Special files are refused without being opened. The declared image size is not checked here
    (that is :func:`read_dicom`'s budget, so a manifest may list a file a later run with a larger
    ``--max-pixels`` decodes), but a deflated dataset is inflated only within ``limits``.

    Raises:
        ImageError: (a :class:`DataError`) with a code of :mod:`mammoclip.imaging.failures`: file
            missing or not a regular file, not DICOM, malformed or truncated header, wrong modality.
    """
    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=True, limits=limits)
    _check_modality(path, ds, modalities)
    _check_header(path, ds, None)
    bits = _single_int(path, ds, "BitsStored", 16, 1, 64)
    return _safe_meta(path, ds, (0.0, float(2**bits - 1)))


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
    except BaseException as err:  # noqa: BLE001 - any failure, a Rust panic included: try every plugin
        if fc.is_interrupt(err):
            raise
        return None
    finally:
        ds.pixel_array_options(decoding_plugin="")


#: Transfer syntaxes whose pixel data is one JPEG 2000 codestream per frame (Part 1, lossless and
#: lossy): a wavelet code, so a decoder can stop at a coarser resolution level (:func:`decode_dicom`'s
#: ``reduce``). HTJ2K (Part 15) is left out: no installed decoder exposes its reduce factor.
J2K_SYNTAXES: frozenset[str] = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


@dataclass(frozen=True)
class J2KHeader:
    """What the main header of a JPEG 2000 codestream says about reduced decoding.

    Attributes:
        rows: Ysiz - YOsiz, the image height on the reference grid.
        columns: Xsiz - XOsiz.
        components: Csiz.
        precision: Bits of component 0 (Ssiz & 0x7F, plus one).
        signed: Component 0 holds signed values.
        origin: (XOsiz, YOsiz); reduced grids are simple halvings only when it is (0, 0).
        levels: Wavelet decomposition levels of component 0 (COD, or its COC): the largest reduce
            factor the codestream allows.
    """

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    origin: tuple[int, int]
    levels: int


def parse_j2k_header(stream: bytes) -> J2KHeader | None:
    """Read SIZ, COD and COC from a codestream's main header (a JP2 wrapper is looked through).

    Returns None when the stream has no readable main header: the caller then decodes in full,
    and the full decoder reports what is wrong with the stream.
    """
    start = stream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the codestream, inside a JP2 box or not
    if start < 0:
        return None
    pos, siz, levels, coc_levels = start + 2, None, None, None
    try:
        while pos + 4 <= len(stream):
            marker, length = int.from_bytes(stream[pos:pos + 2], "big"), int.from_bytes(stream[pos + 2:pos + 4], "big")
            body = stream[pos + 4:pos + 2 + length]
            if marker == 0xFF90 or length < 2:  # SOT: the main header is over
                break
            if marker == 0xFF51 and len(body) >= 38:
                xsiz, ysiz, xo, yo = (int.from_bytes(body[2 + 4 * k:6 + 4 * k], "big") for k in range(4))
                csiz = int.from_bytes(body[34:36], "big")
                ssiz = body[36]
                siz = (ysiz - yo, xsiz - xo, csiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), (xo, yo))
            elif marker == 0xFF52 and len(body) >= 6:
                levels = body[5]  # Scod, progression, layers (2), MCT, then SPcod's decomposition levels
            elif marker == 0xFF53 and siz is not None:
                wide = siz[2] >= 257  # Ccoc is 2 bytes when there are 257 components or more
                component = int.from_bytes(body[:2 if wide else 1], "big")
                if component == 0 and len(body) >= (4 if wide else 3) + 1:
                    coc_levels = body[(3 if wide else 2) + 1]
            pos += 2 + length
    except IndexError:
        return None
    if siz is None or levels is None:
        return None
    return J2KHeader(*siz, levels=int(coc_levels if coc_levels is not None else levels))


def reduce_level(header: J2KHeader, reduce: int, min_side: int = 0) -> int:
    """The reduce factor to use: at most ``reduce`` and the codestream's levels, the longest side >= ``min_side``.

    A level is also skipped when Pillow cannot decode it: Pillow sizes a reduced image as
    ``round(side / 2**level)`` (halves up) where OpenJPEG returns ``ceil(side / 2**level)``, and
    refuses the tile when the two differ (a side whose remainder is non-zero but below half of
    ``2**level``). Mammogram sizes (3328, 2560, 4096, 2294, 1914, ...) pass at levels 1-2.
    """
    def decodable(level: int) -> bool:
        power = 1 << level
        return all(-(-side // power) == (side + power // 2) // power for side in (header.rows, header.columns))

    level = max(0, min(reduce, header.levels))
    while level > 0 and (max(header.rows >> level, header.columns >> level) < min_side or not decodable(level)):
        level -= 1
    return level


#: How many levels to drop: a number, or a function of the codestream's header (the caller's policy).
Reduce = int | Callable[[J2KHeader], int]


def _j2k_reduced(ds: Any, tsyntax: Any, reduce: Reduce) -> tuple[np.ndarray, int] | None:
    """Decode a JPEG 2000 frame ``2**level`` times smaller per side; None: decode in full instead.

    OpenJPEG's reduce factor (through Pillow, whose JPEG 2000 plugin is the installed binding that
    exposes it) decodes only the coarser wavelet subbands, a fraction of the entropy-decoding work.
    The result is trimmed to ``rows // 2**level`` x ``columns // 2**level``: a last row or column
    that stands for fewer than ``2**level`` original pixels is dropped, so reduced pixel ``n``
    always stands for original pixels ``[n * 2**level, (n + 1) * 2**level)`` and a transform record
    can keep the original grid as its reference. Anything unusual (several frames or components,
    a signed or over-16-bit component, an image origin other than (0, 0), a size that disagrees
    with the DICOM header, Pillow without OpenJPEG, a decoder error) returns None: the full decode
    is always the fallback, never a failure.
    """
    if not reduce or str(tsyntax) not in J2K_SYNTAXES:
        return None
    try:
        import io

        from PIL import Image, features
        from pydicom.encaps import generate_frames

        if not features.check("jpg_2000"):
            return None
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        header = parse_j2k_header(frame)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (header is None or header.components != 1 or header.signed or header.precision > 16
                or header.origin != (0, 0) or (header.rows, header.columns) != (rows, cols)):
            return None
        level = reduce_level(header, reduce(header) if callable(reduce) else reduce)
        if level == 0:
            return None
        with Image.open(io.BytesIO(frame)) as im:
            im.reduce = level  # type: ignore[assignment]  # OpenJPEG's cp_reduce (a property of Pillow's JPEG 2000 image)
            im.load()
            array = np.asarray(im)
        h, w = rows >> level, cols >> level
        if array.ndim != 2 or array.shape[0] < h or array.shape[1] < w:
            return None
        array = array[:h, :w]
        if array.dtype == np.uint16 and header.precision < 16:  # Pillow scales 9-15-bit samples to 16 bits
            array = array >> (16 - header.precision)
        dtype = np.uint8 if int(ds.get("BitsAllocated", 16) or 16) <= 8 else np.uint16
        return np.ascontiguousarray(array, dtype=dtype), level
    except BaseException as err:  # noqa: BLE001 - any failure here leaves the full decode to try (and report)
        if fc.is_interrupt(err):
            raise
        return None


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
        raise _fail(path, fc.UNSUPPORTED_SYNTAX, f"no decoder for transfer syntax {tsyntax.name!r}; install the pylibjpeg "
                        f"plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle) or python-gdcm "
                        f"(missing: {missing})")


def _repair_voi(ds: Any) -> None:
    """Drop a window the VOI step cannot use, so the image falls back to min-max in the breast.

    The documented rule (docs/data.md, "Robustness"): a first WindowCenter/WindowWidth that is
    non-finite, a width below 1 (LINEAR, DICOM PS3.3 C.11.2.1.2) or not above 0 (other functions), or
    an unknown VOILUTFunction, is a header defect that says nothing about the pixels; ignoring it
    keeps the image, where applying it would give an all-black or all-white PNG.
    """
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return
    try:
        center, width = (ds.get(k) for k in ("WindowCenter", "WindowWidth"))
        center = float(center[0] if isinstance(center, (list, tuple)) or type(center).__name__ == "MultiValue"
                       else center)
        width = float(width[0] if isinstance(width, (list, tuple)) or type(width).__name__ == "MultiValue"
                      else width)
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        usable = (math.isfinite(center) and math.isfinite(width) and func in ("LINEAR", "LINEAR_EXACT", "SIGMOID")
                  and (width >= 1 if func == "LINEAR" else width > 0))
    except Exception:  # noqa: BLE001 - unreadable, empty or non-numeric window values
        usable = False
    if not usable:
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
            if keyword in ds:
                del ds[keyword]


def _check_rescale(path: Path, ds: Any) -> None:
    """RescaleSlope/Intercept must be finite (and the slope non-zero): no rule can repair them."""
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        try:
            raw = ds.get(keyword, None)
            value = default if raw is None or raw == "" else float(raw)
        except Exception as err:  # noqa: BLE001 - multi-valued or non-numeric
            raise _fail(path, fc.BAD_HEADER, f"{keyword} is not one number ({fc.describe_exception(err)})") from None
        if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise _fail(path, fc.NONFINITE_LUT, f"{keyword} is {value!r}: the pixel values are undefined")


def _decode(path: Path, modalities: tuple[str, ...] | None,
            limits: DecodeLimits | None = DEFAULT_LIMITS, reduce: Reduce = 0) -> tuple[Any, np.ndarray, int]:
    """Read, check and decode one file: the dataset, its stored values (any integer dtype), the reduce level.

    Every failure is an :class:`ImageError` with a code: whatever a malformed file or a decoder
    plugin raises, a Rust panic (a BaseException) included, only Ctrl-C and ``sys.exit`` pass through.
    A non-zero ``reduce`` asks JPEG 2000 files for a reduced resolution (:func:`_j2k_reduced`); other
    syntaxes, and JPEG 2000 files that cannot be reduced, decode in full (level 0).
    """
    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=False, limits=limits)
    _check_modality(path, ds, modalities)
    _check_header(path, ds, limits)
    try:
        has_pixels = "PixelData" in ds
    except Exception as err:  # noqa: BLE001
        raise _fail(path, fc.BAD_HEADER, f"cannot read the pixel data element ({fc.describe_exception(err)})") from None
    if not has_pixels:
        raise _fail(path, fc.NO_PIXELS, "DICOM has no pixel data")
    frames = _single_int(path, ds, "NumberOfFrames", 1, 1, 2**31 - 1)
    if frames > 1:
        raise _fail(path, fc.UNSUPPORTED_IMAGE, f"multi-frame DICOM ({frames} frames) is not supported")
    if _single_int(path, ds, "SamplesPerPixel", 1, 1, 4) != 1:
        raise _fail(path, fc.UNSUPPORTED_IMAGE, "colour DICOM is not a mammogram")
    _check_rescale(path, ds)
    _repair_voi(ds)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(tsyntax, "name", str(tsyntax))
    _check_decoder(path, tsyntax)
    reduced = _j2k_reduced(ds, tsyntax, reduce) if reduce else None
    if reduced is not None:
        return ds, reduced[0], reduced[1]
    try:
        stored = _fast_pixel_array(ds, tsyntax)
        if stored is None:
            stored = ds.pixel_array
    except NotImplementedError:
        raise _fail(path, fc.UNSUPPORTED_SYNTAX, f"no decoder for transfer syntax {name!r}: no installable plugin "
                    "reads it; convert the file (e.g. `gdcmconv --raw` or `dcmdjpeg`) to an uncompressed or "
                    "JPEG/JPEG 2000/RLE syntax") from None
    except MemoryError:
        raise _fail(path, fc.TOO_LARGE, f"out of memory while decoding the pixel data ({name})") from None
    except Exception as err:  # noqa: BLE001 - RuntimeError, ValueError, struct.error, ...: a corrupt stream
        raise _fail(path, fc.DECODE_ERROR, f"cannot decode pixel data ({name}), the file may be truncated "
                    f"or corrupt ({fc.describe_exception(err)})") from None
    except BaseException as err:  # noqa: BLE001 - pyo3's PanicException and the like
        if fc.is_interrupt(err):
            raise
        raise _fail(path, fc.DECODE_PANIC, f"the decoder panicked on the pixel data ({name}) "
                    f"({fc.describe_exception(err)})") from None
    if stored.ndim != 2:
        raise _fail(path, fc.UNSUPPORTED_IMAGE, f"expected a 2-D grayscale image, got shape {stored.shape}")
    return ds, stored, 0


def _safe_values(path: Path, ds: Any, stored: np.ndarray, *, voi: bool, invert: bool
                 ) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`_values` with its failures coded: a non-finite or empty value range is NONFINITE_LUT."""
    try:
        image, (lo, hi) = _values(ds, stored, voi=voi, invert=invert)
    except MemoryError:
        raise _fail(path, fc.TOO_LARGE, "out of memory while applying the modality/VOI LUT") from None
    except Exception as err:  # noqa: BLE001 - a malformed LUT sequence or descriptor
        raise _fail(path, fc.BAD_HEADER, f"cannot apply the modality/VOI LUT ({fc.describe_exception(err)})") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _fail(path, fc.NONFINITE_LUT, f"the modality/VOI LUT maps the stored range to [{lo}, {hi}]")
    return image, (lo, hi)


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
    limits: DecodeLimits | None = DEFAULT_LIMITS,
) -> tuple[np.ndarray, DicomMeta]:
    """Decode one single-frame grayscale DICOM.

    Args:
        path: The DICOM file.
        voi: Apply the VOI LUT (LUT sequence, else window centre/width) when the file has one.
        invert: Turn MONOCHROME1 (dark is dense) into MONOCHROME2 as ``lo + hi - x`` over
            :attr:`DicomMeta.value_range`, so that bright means dense for every file.
        modalities: Accepted ``Modality`` values; ``None`` accepts anything.
        limits: The size and decompression budget checked on the header before decoding
            (``None``: unbounded).

    Returns:
        ``(H, W)`` float32 array after the modality LUT (and VOI LUT when asked), and the metadata.
        ``meta.value_range`` is the range of values the array can hold.

    Raises:
        ImageError: (a :class:`DataError`) naming the file and the problem, with a stable code of
            :mod:`mammoclip.imaging.failures` (not DICOM, malformed header, over the budget, no pixel
            data, wrong modality, no decoder, a decoder error or panic, non-finite LUT, ...).
    """
    path = Path(path)
    ds, stored, _ = _decode(path, modalities, limits)
    image, value_range = _safe_values(path, ds, stored, voi=voi, invert=invert)
    return image, _safe_meta(path, ds, value_range)


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
    limits: DecodeLimits | None = DEFAULT_LIMITS,
    reduce: Reduce = 0,
) -> tuple[np.ndarray, np.ndarray | None, DicomMeta]:
    """Like :func:`read_dicom`, but without converting the full frame to float.

    A mammogram is 8-17 MP; turning every stored value into float32 (and through rescale, VOI and
    inversion) costs about as much as decoding an uncompressed file, while the pipeline only needs
    values for a subsampled copy and the breast crop. So the stored values come back as integer
    *codes* plus a LUT over all 2**8 or 2**16 codes, built by running the exact per-pixel pipeline
    of :func:`read_dicom` on every code: ``lut[codes]`` equals ``read_dicom(...)[0]`` bit for bit.

    Args:
        reduce: JPEG 2000 only: drop up to this many wavelet resolution levels while decoding
            (each halves both sides; capped by :func:`reduce_level`), a fraction of the full
            decode's cost; or a function of the codestream's :class:`J2KHeader` that returns the
            number (a policy that needs the image size or the levels before decoding). Other
            transfer syntaxes ignore it. ``meta.reduce`` says what was done; the codes are then
            ``rows // 2**reduce`` x ``columns // 2**reduce``.
        voi, invert, modalities, limits: as :func:`read_dicom`.

    Returns:
        ``(codes, lut, meta)``. ``lut`` is None when the values are the codes themselves (no
        rescale, VOI or inversion: the common raw mammogram), so ``codes`` can be used directly.
        Stored types other than 8/16-bit integers come back as float32 values with ``lut=None``.

    Raises:
        ImageError: as :func:`read_dicom`.
    """
    path = Path(path)
    ds, stored, level = _decode(path, modalities, limits, reduce)
    codes, lut, meta = _to_codes(path, ds, stored, voi=voi, invert=invert)
    return codes, lut, (replace(meta, reduce=level) if level else meta)


def _to_codes(path: Path, ds: Any, stored: np.ndarray, *, voi: bool, invert: bool
              ) -> tuple[np.ndarray, np.ndarray | None, DicomMeta]:
    """Stored values -> ``(codes, lut, meta)`` of :func:`decode_dicom`."""
    code_type = _CODE_DTYPES.get(stored.dtype)
    if code_type is None:
        image, value_range = _safe_values(path, ds, stored, voi=voi, invert=invert)
        return image, None, _safe_meta(path, ds, value_range)
    all_codes = np.arange(2 ** (8 * code_type.itemsize), dtype=code_type).view(stored.dtype)
    lut, value_range = _safe_values(path, ds, all_codes, voi=voi, invert=invert)
    if not np.isfinite(lut).all():  # e.g. a huge slope overflowing float32 for the top codes
        raise _fail(path, fc.NONFINITE_LUT, "the modality/VOI LUT gives non-finite values")
    codes = stored.view(code_type)  # signed values index the LUT through their bit pattern
    meta = _safe_meta(path, ds, value_range)
    if stored.dtype == code_type and np.array_equal(lut, all_codes.astype(np.float32)):
        return codes, None, meta
    return codes, np.ascontiguousarray(lut, dtype=np.float32), meta
