"""The tidy manifest: one row per image, plus a boxes table and a reports table.

Every data source (DICOM folder, VinDr-Mammo, RSNA, CBIS-DDSM, the official image-text CSV, the
synthetic cohort) is turned into the same three tables, so that everything downstream (datasets,
evaluation, training) reads one format:

* ``manifest.csv`` -- one row per image: :data:`REQUIRED_COLUMNS` + optional labels, report id and the
  preprocessing record (see :data:`TRANSFORM_COLUMNS`).
* ``boxes.csv`` -- one row per annotated finding per image: :data:`BOX_COLUMNS`.
* ``reports.csv`` -- one row per report: :data:`REPORT_COLUMNS`.

Image paths may be absolute or relative to the manifest's folder; :func:`load_bundle` resolves them.
Validation reports every problem with its row and column so that a user can fix the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.constants import BIRADS_CATEGORIES, DENSITIES, LATERALITIES, SPLITS, VIEWS
from mammoclip.errors import DataError

#: Columns every manifest row has.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "laterality",
    "view",
    "path",
    "split",
    "source",
)
#: Nullable 0/1 label columns.
BINARY_LABEL_COLUMNS: tuple[str, ...] = ("mass", "calcification", "distortion", "asymmetry", "malignant")
#: Optional label columns with their own vocabularies.
LABEL_COLUMNS: tuple[str, ...] = ("density", "birads", *BINARY_LABEL_COLUMNS)
#: The preprocessing record: maps original pixel coordinates to the processed image and back
#: (see :mod:`mammoclip.imaging.breast`). All optional; present once an image has been preprocessed.
TRANSFORM_COLUMNS: tuple[str, ...] = (
    "orig_height",
    "orig_width",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "scale_x",
    "scale_y",
    "pad_left",
    "pad_top",
    "flipped",
    "height",
    "width",
)
#: Optional column: how ``split`` was set. :data:`SPLIT_BY_HASH` marks rows whose split an adapter drew
#: by patient hash (:func:`assign_patient_splits`) because the source had none; a manifest without the
#: column (older ones, hand-written ones) has splits chosen by the user.
SPLIT_SOURCE_COLUMN = "split_source"
SPLIT_BY_HASH = "hash"
OPTIONAL_COLUMNS: tuple[str, ...] = (*LABEL_COLUMNS, "report_id", SPLIT_SOURCE_COLUMN, *TRANSFORM_COLUMNS)

#: Boxes table. ``space`` says which pixel grid the coordinates live in: ``original`` (the source
#: DICOM) or ``processed`` (the image at ``path``). ``mask_path`` is optional (per-lesion mask PNG).
BOX_COLUMNS: tuple[str, ...] = ("image_id", "label", "xmin", "ymin", "xmax", "ymax", "space")
BOX_SPACES: tuple[str, ...] = ("original", "processed")
#: Reports table.
REPORT_COLUMNS: tuple[str, ...] = ("report_id", "findings", "impression", "history", "text")

MANIFEST_FILE = "manifest.csv"
BOXES_FILE = "boxes.csv"
REPORTS_FILE = "reports.csv"
#: Files an adapter left out (``file, reason``), from ``images.attrs["skipped"]``; written by
#: :meth:`Bundle.save` and read back by :func:`load_bundle`, so a later ``preprocess`` still reports them.
LEFT_OUT_FILE = "left_out.csv"


@dataclass(frozen=True)
class Problem:
    """One validation problem. ``row`` is the 0-based data row (None for whole-file problems)."""

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where) or 'file'}: {self.message}"


def _bad_values(series: pd.Series, allowed: Iterable[object]) -> pd.Series:
    allowed_set = set(allowed)
    present = series.notna()
    return present & ~series.isin(allowed_set)


def validate_manifest(df: pd.DataFrame, *, check_files: bool = False, root: Path | None = None) -> list[Problem]:
    """Check a manifest table against the schema.

    Args:
        df: The manifest as read from CSV (all columns may still be strings).
        check_files: Also check that every ``path`` exists.
        root: Folder that relative paths are relative to (needed with ``check_files``).

    Returns:
        Every problem found, in row order; empty when the manifest is valid.
    """
    problems: list[Problem] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    for col in missing:
        problems.append(Problem(None, col, "required column is missing"))
    if missing:
        return problems

    for col in ("image_id", "patient_id", "study_id", "path"):
        for idx in np.flatnonzero(df[col].isna().to_numpy() | (df[col].astype(str).str.strip() == "").to_numpy()):
            problems.append(Problem(int(idx), col, "empty value"))
    dup = df["image_id"].duplicated(keep="first").to_numpy()
    for idx in np.flatnonzero(dup):
        problems.append(Problem(int(idx), "image_id", f"duplicate image_id {df['image_id'].iloc[idx]!r}"))

    vocab: dict[str, Iterable[object]] = {
        "laterality": LATERALITIES,
        "view": VIEWS,
        "split": SPLITS,
    }
    for col, allowed in vocab.items():
        for idx in np.flatnonzero(_bad_values(df[col], allowed).to_numpy() | df[col].isna().to_numpy()):
            problems.append(
                Problem(int(idx), col, f"value {df[col].iloc[idx]!r} not in {sorted(map(str, allowed))}")
            )
    if "density" in df.columns:
        for idx in np.flatnonzero(_bad_values(df["density"], DENSITIES).to_numpy()):
            problems.append(Problem(int(idx), "density", f"value {df['density'].iloc[idx]!r} not in A-D"))
    if "birads" in df.columns:
        num = pd.to_numeric(df["birads"], errors="coerce")
        bad = df["birads"].notna() & ~num.isin(BIRADS_CATEGORIES)
        for idx in np.flatnonzero(bad.to_numpy()):
            problems.append(Problem(int(idx), "birads", f"value {df['birads'].iloc[idx]!r} not in 0-6"))
    for col in BINARY_LABEL_COLUMNS:
        if col in df.columns:
            num = pd.to_numeric(df[col], errors="coerce")
            bad = df[col].notna() & ~num.isin([0, 1])
            for idx in np.flatnonzero(bad.to_numpy()):
                problems.append(Problem(int(idx), col, f"value {df[col].iloc[idx]!r} is not 0, 1 or empty"))

    # A patient must live in exactly one split: anything else leaks between train and test.
    splits_per_patient = df.groupby("patient_id")["split"].nunique()
    for patient in splits_per_patient[splits_per_patient > 1].index:
        rows = np.flatnonzero((df["patient_id"] == patient).to_numpy())
        problems.append(
            Problem(int(rows[0]), "split", f"patient {patient!r} appears in several splits (rows {rows.tolist()})")
        )

    if check_files:
        base = root or Path(".")
        for row, p in enumerate(df["path"].astype(str)):
            path = Path(p) if Path(p).is_absolute() else base / p
            if not path.exists():
                problems.append(Problem(row, "path", f"file not found: {path}"))
    return problems


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Give the label columns their dtypes: nullable integers for binary labels and BI-RADS."""
    df = df.copy()
    for col in ("image_id", "patient_id", "study_id", "path", "report_id"):
        if col in df.columns:
            df[col] = df[col].astype("string")
    for col in (*BINARY_LABEL_COLUMNS, "birads"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    if "density" in df.columns:
        df["density"] = df["density"].astype("string")
    return df


def read_table_csv(path: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` for the project's tables (manifest, boxes, reports), with one-line errors.

    The tables are UTF-8 (what :func:`write_manifest` and every spreadsheet's "CSV UTF-8" export
    write; a byte-order mark is accepted). Another encoding is refused rather than guessed: a cp1252
    fallback would silently turn the bytes of any other code page into wrong report text, so the
    error names the file, the line and byte offset of the first invalid byte, and the fix.

    Args:
        path: The CSV file.
        what: What the table is, for the message (``"manifest"``, ``"reports table"``).
        **kwargs: Passed to ``pd.read_csv`` (dtypes, NA handling).

    Raises:
        DataError: not UTF-8, or not parseable as CSV.
    """
    try:
        return pd.read_csv(path, encoding="utf-8", **kwargs)
    except UnicodeDecodeError as err:
        raise DataError(_not_utf8(path, what)) from err
    except (pd.errors.ParserError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot parse {what}: {first}") from err


def _not_utf8(path: Path, what: str) -> str:
    """The one-line message for a table that is not UTF-8: where the first bad byte is and the fix."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        where = f"line {line}, byte offset {err.start} (0x{raw[err.start]:02x})"
    else:  # pandas decodes in chunks; the whole file decodes, so the chunking itself was at fault
        where = "a chunk boundary"
    return (f"{path}: {what} is not UTF-8 text (first invalid byte at {where}); re-save it as UTF-8, "
            f"e.g. `iconv -f cp1252 -t utf-8 {path.name} > fixed.csv` or \"CSV UTF-8\" in a spreadsheet")


def read_manifest(path: str | Path, *, validate: bool = True, check_files: bool = False) -> pd.DataFrame:
    """Read and validate ``manifest.csv`` (or ``.parquet``).

    Raises:
        DataError: naming the file, row and column of every problem found.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    if path.suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot parse manifest: {err}") from err
    else:
        df = read_table_csv(path, "manifest",
                            dtype={"image_id": str, "patient_id": str, "study_id": str, "report_id": str})
    if validate:
        problems = validate_manifest(df, check_files=check_files, root=path.parent)
        if problems:
            shown = "\n  ".join(str(p) for p in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(f"{path}: {len(problems)} manifest problem(s):\n  {shown}{more}")
    return _coerce(df)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest (CSV or Parquet by suffix) atomically, required columns first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns]
    rest = [c for c in df.columns if c not in first]
    out = df[first + rest]
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        out.to_parquet(tmp, index=False)
    else:
        out.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def _write_table(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> Path:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: table lacks columns {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rest = [c for c in df.columns if c not in columns]
    tmp = path.with_name(path.name + ".tmp")
    df[list(columns) + rest].to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def write_boxes(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the boxes table (:data:`BOX_COLUMNS` first)."""
    return _write_table(df, Path(path), BOX_COLUMNS)


def write_reports(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the reports table (:data:`REPORT_COLUMNS` first)."""
    return _write_table(df, Path(path), REPORT_COLUMNS)


def empty_boxes() -> pd.DataFrame:
    """An empty boxes table with the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("xmin", "ymin", "xmax", "ymax") else "string")
                         for c in BOX_COLUMNS})


def empty_reports() -> pd.DataFrame:
    """An empty reports table with the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="string") for c in REPORT_COLUMNS})


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Read and check a boxes table; a missing file gives an empty table."""
    path = Path(path)
    if not path.exists():
        return empty_boxes()
    df = read_table_csv(path, "boxes table", dtype={"image_id": str, "label": str, "space": str})
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: boxes table lacks columns {missing}")
    bad = ~df["space"].isin(BOX_SPACES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {row}, column 'space': {df['space'].iloc[row]!r} not in {BOX_SPACES}")
    inverted = (df["xmax"] < df["xmin"]) | (df["ymax"] < df["ymin"])
    if inverted.any():
        row = int(np.flatnonzero(inverted.to_numpy())[0])
        raise DataError(f"{path}: row {row}: box has xmax < xmin or ymax < ymin")
    return df


def read_reports(path: str | Path) -> pd.DataFrame:
    """Read a reports table; a missing file gives an empty table."""
    path = Path(path)
    if not path.exists():
        return empty_reports()
    df = read_table_csv(path, "reports table", dtype=str, keep_default_na=False)
    missing = [c for c in REPORT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: reports table lacks columns {missing}")
    return df


@dataclass
class Bundle:
    """A manifest with its boxes and reports, and the folder relative paths start from."""

    images: pd.DataFrame
    boxes: pd.DataFrame = field(default_factory=empty_boxes)
    reports: pd.DataFrame = field(default_factory=empty_reports)
    root: Path = Path(".")

    def abspath(self, rel: str) -> Path:
        """Resolve an image/mask path from the manifest against :attr:`root`."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def split(self, name: str) -> Bundle:
        """The sub-bundle of one split (boxes and reports restricted to its images)."""
        images = self.images[self.images["split"] == name].reset_index(drop=True)
        ids = set(images["image_id"])
        boxes = self.boxes[self.boxes["image_id"].isin(ids)].reset_index(drop=True)
        if "report_id" in images.columns and len(self.reports):
            reports = self.reports[self.reports["report_id"].isin(set(images["report_id"].dropna()))]
        else:
            reports = self.reports
        return Bundle(images, boxes, reports.reset_index(drop=True), self.root)

    def save(self, folder: str | Path) -> Path:
        """Write the three tables into ``folder``; returns the manifest path."""
        folder = Path(folder)
        write_boxes(self.boxes, folder / BOXES_FILE)
        write_reports(self.reports, folder / REPORTS_FILE)
        left_out = list(self.images.attrs.get("skipped", []))
        if left_out:
            pd.DataFrame(left_out, columns=["file", "reason"]).to_csv(folder / LEFT_OUT_FILE, index=False)
        elif (folder / LEFT_OUT_FILE).exists():
            (folder / LEFT_OUT_FILE).unlink()  # a stale list from an earlier build must not be read back
        return write_manifest(self.images, folder / MANIFEST_FILE)


def load_bundle(path: str | Path, *, check_files: bool = False) -> Bundle:
    """Load a manifest and the ``boxes.csv``/``reports.csv`` beside it.

    Args:
        path: The manifest file, or the folder that holds ``manifest.csv``.
        check_files: Fail when an image file named by the manifest is missing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    images = read_manifest(path, check_files=check_files)
    if (path.parent / LEFT_OUT_FILE).exists():
        left_out = pd.read_csv(path.parent / LEFT_OUT_FILE, dtype=str, keep_default_na=False)
        if {"file", "reason"} <= set(left_out.columns):
            images.attrs["skipped"] = list(zip(left_out["file"], left_out["reason"], strict=True))
    return Bundle(
        images=images,
        boxes=read_boxes(path.parent / BOXES_FILE),
        reports=read_reports(path.parent / REPORTS_FILE),
        root=path.parent,
    )


def _patient_hash(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_patient_splits(
    patient_ids: Iterable[str],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each patient to train/val/test, never splitting a patient.

    The assignment of a patient depends only on its id and the seed (a hash), so adding patients to
    a cohort never moves an existing patient to another split.

    Args:
        patient_ids: Patient identifiers (duplicates are fine).
        fractions: Target shares of (train, val, test); must sum to 1.

    Returns:
        Mapping patient id -> split name.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    cut_train = fractions[0]
    cut_val = fractions[0] + fractions[1]
    out: dict[str, str] = {}
    for pid in dict.fromkeys(str(p) for p in patient_ids):
        u = _patient_hash(pid, seed)
        out[pid] = "train" if u < cut_train else ("val" if u < cut_val else "test")
    return out


def splits_from_hash(images: pd.DataFrame) -> bool:
    """True when every row's split was drawn by patient hash when the manifest was built (not given by
    the source or the user), as recorded in :data:`SPLIT_SOURCE_COLUMN`."""
    if SPLIT_SOURCE_COLUMN not in images.columns or not len(images):
        return False
    return bool((images[SPLIT_SOURCE_COLUMN].astype(str) == SPLIT_BY_HASH).all())


def breast_key(df: pd.DataFrame) -> pd.Series:
    """The breast identifier (patient x laterality) used for per-breast aggregation."""
    return df["patient_id"].astype(str) + "_" + df["laterality"].astype(str)
