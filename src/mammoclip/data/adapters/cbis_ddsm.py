"""CBIS-DDSM case descriptions: ``{mass,calc}_case_description_{train,test}_set.csv``.

One CSV row per abnormality; one manifest row per image (the first folder of ``image file path``,
e.g. ``Mass-Training_P_00001_LEFT_CC``). Labels: ``mass``/``calcification`` from the abnormality
type, ``malignant`` = any MALIGNANT abnormality, ``birads`` = the highest assessment, ``density``
1-4 -> A-D. Split from the file name (train/test) with a patient-level val carved from train; a
patient in both the train and test files goes to test (no leak). Image paths are the CSV's
``image file path`` relative to the source folder.

Boxes: CBIS-DDSM gives a binary ROI mask per abnormality (``ROI mask file path``, a DICOM on the
full image's grid), not a box. Each mask becomes one box in ``original`` pixels, the bounding box of
all its nonzero pixels (several blobs, e.g. a calcification cluster, give one box around the whole
ROI), labelled ``mass`` or ``calcification`` with the abnormality's ``pathology``; preprocessing then
maps it like any other box. The dataset's CSVs sometimes swap ``ROI mask file path`` and
``cropped image file path`` (a known quirk of the release), so both files are
candidates and the mask is the one that has the full image's size and only two values. A
missing or unreadable mask, or one whose size differs from the image's, is logged and skipped
(listed in ``bundle.boxes.attrs["skipped"]``), never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import carve_val, one_split_per_patient, read_csv
from mammoclip.data.manifest import BOX_COLUMNS, Bundle, empty_boxes
from mammoclip.errors import DataError

log = logging.getLogger(__name__)

PATTERN = "*_case_description_*_set.csv"
DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}
COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality type", "pathology", "image file path")
#: Columns naming an abnormality's ROI mask; the first is the documented one, the second the file the
#: dataset sometimes swaps with it. Both optional: without them no boxes are made.
MASK_COLUMNS: tuple[str, ...] = ("ROI mask file path", "cropped image file path")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: Skipped masks logged one by one; beyond this, one summary line (the full list is kept).
MAX_LOGGED: int = 10


def abnormality_label(kind: str) -> str:
    """CBIS-DDSM ``abnormality type`` -> box label (``mass`` or ``calcification``)."""
    kind = kind.strip().lower()
    return "calcification" if kind.startswith("calc") else kind


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box around every foreground pixel of a binary mask, in continuous pixel coordinates.

    Pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` (the manifest's convention), so the box of a
    single pixel ``(i, j)`` is ``(j, i, j + 1, i + 1)``. Foreground is the larger of the two values
    (a ``0/255`` or ``0/1`` mask: the nonzero pixels); several blobs give one box around all.

    Args:
        mask: ``(H, W)`` array with at most two distinct values.

    Returns:
        ``(xmin, ymin, xmax, ymax)``, or None when the mask is empty (one value only).
    """
    lo, hi = mask.min(), mask.max()
    if lo == hi:
        return None
    fg = mask == hi  # (H, W) bool
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _shape(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image file from its header when that is cheap (DICOM), else None."""
    if not _is_dicom(path):
        return None
    from mammoclip.imaging.dicom import read_dicom_header

    meta = read_dicom_header(path, modalities=None)
    return meta.rows, meta.columns


def _read_mask(path: Path) -> np.ndarray:
    """Stored values of a mask file (DICOM or PNG/TIFF), no float copy of the frame.

    Raises:
        DataError: the file cannot be read.
    """
    if _is_dicom(path):
        from mammoclip.imaging.dicom import decode_dicom

        codes, _, _ = decode_dicom(path, invert=False, modalities=None)
        return codes  # (H, W) integer codes: a monotonic LUT keeps "two values" and their order
    from mammoclip.imaging.imageio import read_image

    return read_image(path)


def _is_binary(mask: np.ndarray) -> bool:
    lo, hi = mask.min(), mask.max()
    return bool(lo == hi or not np.any((mask != lo) & (mask != hi)))


def roi_box(candidates: Sequence[Path], image_shape: tuple[int, int]
            ) -> tuple[tuple[float, float, float, float] | None, Path | None, list[str]]:
    """Find the ROI mask among ``candidates`` and return its box.

    The mask is the first candidate with the image's size and two values; a candidate of another
    size (the cropped lesion image, or a mask made for another image) is rejected from its header
    alone where the format allows, so cropped images are never decoded. Only one mask is in memory
    at a time.

    Args:
        candidates: Files that may hold the mask, the documented column first.
        image_shape: ``(H, W)`` of the full image the mask belongs to.

    Returns:
        ``(box, mask_path, reasons)``: the box (None when no candidate is a usable mask), the file it
        came from, and why each rejected candidate was rejected.
    """
    reasons: list[str] = []
    for path in candidates:
        try:
            shape = _shape(path)
            if shape is not None and shape != tuple(image_shape):
                reasons.append(f"{path}: size {shape[0]}x{shape[1]} differs from the image's "
                               f"{image_shape[0]}x{image_shape[1]}")
                continue
            mask = _read_mask(path)
        except DataError as err:
            reasons.append(str(err))
            continue
        if mask.shape != tuple(image_shape):
            reasons.append(f"{path}: size {mask.shape[0]}x{mask.shape[1]} differs from the image's "
                           f"{image_shape[0]}x{image_shape[1]}")
        elif not _is_binary(mask):
            reasons.append(f"{path}: not a binary mask (more than two values)")
        elif (box := mask_box(mask)) is None:
            reasons.append(f"{path}: empty mask")
        else:
            return box, path, reasons
    return None, None, reasons


def _mask_candidates(paths: Sequence[object], source: Path) -> list[Path]:
    """The distinct, non-empty mask paths of one CSV row (CBIS paths may end in a newline)."""
    out: list[Path] = []
    for value in paths:
        if isinstance(value, str) and value.strip():
            path = source / value.strip()
            if path not in out:
                out.append(path)
    return out


def _image_shape(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the full image: the DICOM header, or a decode for other formats."""
    shape = _shape(path)
    return shape if shape is not None else _read_mask(path).shape


def _boxes(rows: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, list[str]]:
    """One box per abnormality row whose ROI mask can be read; the reasons for the others."""
    columns = [c for c in MASK_COLUMNS if c in rows.columns]
    if not columns:
        return empty_boxes(), []
    ids = rows["abnormality id"] if "abnormality id" in rows.columns else pd.Series(range(len(rows)))
    shapes: dict[str, tuple[int, int] | str] = {}  # image_id -> (H, W), or why it is unknown
    box_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for iid, image_path, kind, pathology, abn_id, *masks in zip(
            rows["image_id"], rows["image file path"], rows["abnormality type"], rows["pathology"], ids,
            *(rows[c] for c in columns), strict=True):
        finding = f"{iid}_{str(abn_id).strip()}"
        candidates = _mask_candidates(masks, source)
        present = [p for p in candidates if p.exists()]
        if not present:
            skipped.append(f"{finding}: ROI mask not found ({', '.join(map(str, candidates)) or 'no path'})")
            continue
        if iid not in shapes:
            try:
                shapes[iid] = _image_shape(source / str(image_path).strip())
            except DataError as err:
                shapes[iid] = f"cannot check the ROI mask's size: {err}"
        shape = shapes[iid]
        if isinstance(shape, str):
            skipped.append(f"{finding}: {shape}")
            continue
        box, used, reasons = roi_box(present, shape)
        if box is None:
            skipped.append(f"{finding}: no usable ROI mask ({'; '.join(reasons)})")
            continue
        if used != candidates[0]:
            log.info("%s: ROI mask taken from %s (the CSV's mask/cropped columns are swapped)", finding, used)
        box_rows.append({"image_id": iid, "label": abnormality_label(str(kind)),
                         "xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3], "space": "original",
                         "finding_id": finding, "pathology": str(pathology).strip().upper()})
    for reason in skipped[:MAX_LOGGED]:
        log.warning("CBIS-DDSM box skipped: %s", reason)
    if len(skipped) > MAX_LOGGED:  # e.g. CSVs without the images: one line, not thousands
        log.warning("CBIS-DDSM: %d more boxes skipped (%d of %d in all); every reason is in "
                    "bundle.boxes.attrs['skipped']", len(skipped) - MAX_LOGGED, len(skipped), len(rows))
    if not box_rows:
        return empty_boxes(), skipped
    return pd.DataFrame(box_rows, columns=[*BOX_COLUMNS, "finding_id", "pathology"]), skipped


@register_adapter("cbis_ddsm", "CBIS-DDSM: {mass,calc}_case_description_{train,test}_set.csv")
class CbisDdsmAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and any(source.glob(PATTERN))

    @staticmethod
    def load(source: Path, *, seed: int = 0, boxes: bool = True) -> Bundle:
        """Read the case-description CSVs under ``source``.

        Args:
            seed: Seed of the patient-level val split.
            boxes: Read every ROI mask and make the boxes table (one decode per mask); False skips
                the masks (a quick manifest without boxes).

        Raises:
            DataError: no case-description CSV, or one lacks the required columns.
        """
        files = sorted(source.glob(PATTERN))
        if not files:
            raise DataError(f"{source}: no {PATTERN} files")
        frames = []
        for path in files:
            df = read_csv(path, COLUMNS)
            df = df.rename(columns={"breast_density": "breast density"})
            df["split"] = "test" if "_test_" in path.name else "train"
            frames.append(df)
        rows = pd.concat(frames, ignore_index=True)
        rows["image_id"] = rows["image file path"].str.strip().str.split("/").str[0]
        rows["abnormality type"] = rows["abnormality type"].str.strip().str.lower()
        grouped = rows.groupby("image_id", sort=False)
        first = grouped.first()
        images = pd.DataFrame({
            "image_id": first.index,
            "patient_id": first["patient_id"].values,
            "study_id": first["patient_id"].values,
            "laterality": first["left or right breast"].str.strip().str.upper().str[0].values,
            "view": first["image view"].str.strip().str.upper().values,
            "path": first["image file path"].str.strip().values,
            "split": first["split"].values,
            "source": "cbis_ddsm",
        })
        images["mass"] = grouped["abnormality type"].apply(lambda s: int((s == "mass").any())).values
        images["calcification"] = grouped["abnormality type"].apply(
            lambda s: int(s.str.startswith("calc").any())).values
        images["malignant"] = grouped["pathology"].apply(
            lambda s: int(s.str.strip().str.upper().eq("MALIGNANT").any())).values
        if "assessment" in rows.columns:
            images["birads"] = grouped["assessment"].apply(
                lambda s: pd.to_numeric(s, errors="coerce").max()).astype("Int64").values
        if "breast density" in rows.columns:
            images["density"] = first["breast density"].astype(str).str.strip().map(DENSITY).values
        for col in ("mass", "calcification", "malignant"):
            images[col] = images[col].astype("Int64")
        images["split"] = one_split_per_patient(images["patient_id"], images["split"])
        images["split"] = carve_val(images["patient_id"], images["split"], seed=seed)
        box_table, skipped = empty_boxes(), list[str]()
        if boxes:
            box_table, skipped = _boxes(rows, source)
        box_table.attrs["skipped"] = skipped
        return Bundle(images=images, boxes=box_table, root=source)
