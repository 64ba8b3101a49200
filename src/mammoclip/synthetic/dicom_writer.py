"""DICOM output of the synthetic cohort: 16-bit "Digital Mammography X-Ray Image - For Presentation".

Each image is written with the tags a mammography reader relies on (Modality MG, ViewPosition,
ImageLaterality, PhotometricInterpretation, BitsStored, Window Center/Width, optionally a VOI LUT
Sequence, PixelSpacing, patient/study/series/instance UIDs, a generated patient name). The
transfer syntax is chosen per study: explicit VR little endian (uncompressed), RLE Lossless or
JPEG 2000 Lossless. Compression uses pydicom's encoders (pylibjpeg-rle / pylibjpeg-openjpeg);
when an encoder is missing or fails, the file is written uncompressed instead.

All UIDs are derived from the cohort seed and the image id (``generate_uid(entropy_srcs=...)``), so
the same seed gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammoclip.synthetic.acquisition import AcquisitionProfile

#: Transfer syntaxes by short name (the values of the ``compression`` option).
TRANSFER_SYNTAXES: dict[str, str] = {
    "none": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "j2k": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
}
#: SOP class of digital mammography images for presentation.
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

_SYLLABLES = ("ka", "mor", "len", "tri", "sa", "vel", "do", "ran", "bel", "ith", "or", "an", "lu", "mi",
              "ser", "ta", "no", "vik", "el", "ra", "ston", "wen", "dal", "fi", "ro", "ma", "gan", "ley")


def synthetic_name(rng: np.random.Generator) -> str:
    """A DICOM person name (``Family^Given``) built from syllables: name-like, never a real record."""
    def word(n: int) -> str:
        return "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=n)).capitalize()

    return f"{word(int(rng.integers(2, 4)))}^{word(int(rng.integers(2, 3)))}"


@dataclass(frozen=True)
class DicomStudy:
    """Per-study identity written into every image of the study."""

    patient_id: str
    patient_name: str
    birth_date: str
    age: int
    study_id: str
    study_date: str
    accession: str
    uid_seed: str  # entropy for the UIDs (cohort seed + study)


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=None, entropy_srcs=[str(p) for p in parts])


def _patient_orientation(laterality: str, view: str) -> list[str]:
    """Row and column directions: chest wall left for L (rows run anterior), right for R."""
    row = "A" if laterality == "L" else "P"
    col = ("R" if laterality == "L" else "L") if view == "CC" else "F"
    return [row, col]


def write_mammogram(path: str | Path, raw: np.ndarray, *, study: DicomStudy, image_id: str,
                    laterality: str, view: str, profile: AcquisitionProfile, spacing_mm: tuple[float, float],
                    window: tuple[float, float], compression: str, marker: bool) -> str:
    """Write one image; returns the transfer syntax name actually used (``none``/``rle``/``j2k``).

    Args:
        raw: (H, W) uint16 detector values in presentation polarity (tissue bright).
        window: (center, width) in detector values.
        compression: Preferred transfer syntax name; falls back to ``none`` when it cannot encode.
        marker: Whether burned-in annotation (laterality/view marker) is present.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = profile.max_value
    stored = (full - raw) if profile.monochrome1 else raw
    stored = np.ascontiguousarray(stored.astype(np.uint16))
    center, width = window
    if profile.monochrome1:
        center = full - center

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MG_FOR_PRESENTATION)
    sop_uid = _uid(study.uid_seed, image_id, "sop")
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["none"])
    meta.ImplementationClassUID = UID(_uid("mammoclip-synthetic"))

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(MG_FOR_PRESENTATION)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(_uid(study.uid_seed, "study"))
    ds.SeriesInstanceUID = UID(_uid(study.uid_seed, laterality, view, "series"))
    ds.FrameOfReferenceUID = UID(_uid(study.uid_seed, laterality, "frame"))
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = profile.vendor
    ds.ManufacturerModelName = profile.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{study.age:03d}Y"
    ds.StudyID = study.study_id
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = "090000"
    ds.AccessionNumber = study.accession
    ds.StudyDescription = "MAMMOGRAPHY SCREENING BILATERAL"
    ds.SeriesDescription = f"{laterality} {view}"
    ds.SeriesNumber = {"RCC": 1, "LCC": 2, "RMLO": 3, "LMLO": 4}[laterality + view]
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.PatientOrientation = _patient_orientation(laterality, view)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "YES" if marker else "NO"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if profile.monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits
    ds.HighBit = profile.bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{spacing_mm[0]:.4f}", f"{spacing_mm[1]:.4f}"]
    ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    if profile.voi_lut:
        ds.VOILUTSequence = Sequence([_voi_lut(center, width, full)])
    ds.PixelData = stored.tobytes()

    used = compression if compression in TRANSFER_SYNTAXES else "none"
    if used != "none":
        try:
            ds.compress(TRANSFER_SYNTAXES[used], stored, generate_instance_uid=False)
        except (RuntimeError, ValueError, ImportError, NotImplementedError):
            # No working encoder for this syntax here: keep the file uncompressed.
            used = "none"
            ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["none"])
            ds.PixelData = stored.tobytes()
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return used


def _voi_lut(center: float, width: float, full: int):
    """A sigmoid VOI LUT over the window (what some vendors ship instead of a linear window).

    The LUT increases with the stored value in both polarities: MONOCHROME1 inversion happens
    after the VOI LUT, by the photometric interpretation.
    """
    from pydicom.dataset import Dataset

    first = int(max(0, center - width / 2))
    last = int(min(full, center + width / 2))
    n = max(2, last - first + 1)
    x = (np.arange(n, dtype=np.float64) + first - center) / (width / 4.0)
    y = 1.0 / (1.0 + np.exp(-x))
    data = np.rint(y * 4095).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [n if n < 65536 else 0, first, 12])  # LUTDescriptor
    item.LUTExplanation = "SIGMOID"
    item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())  # LUTData
    return item
