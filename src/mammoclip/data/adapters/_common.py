"""Helpers shared by the adapters: reading CSVs with clear errors, carving a patient-level val split."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mammoclip.data.manifest import assign_patient_splits
from mammoclip.errors import DataError

#: Share of training patients moved to ``val`` when a source has only train/test.
VAL_FRACTION: float = 0.1


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a source CSV as strings and check its columns.

    Raises:
        DataError: missing file, unparsable CSV or missing columns (all named).
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: cannot parse CSV ({err})") from err
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    return df


def carve_val(patients: pd.Series, splits: pd.Series, *, fraction: float = VAL_FRACTION, seed: int = 0) -> pd.Series:
    """Move a hash-chosen ``fraction`` of the ``train`` patients to ``val`` (whole patients)."""
    train_patients = patients[splits == "train"].unique()
    chosen = assign_patient_splits(train_patients, (1.0 - fraction, fraction, 0.0), seed)
    moved = {p for p, s in chosen.items() if s == "val"}
    return splits.where(~((splits == "train") & patients.astype(str).isin(moved)), "val")


def one_split_per_patient(patients: pd.Series, splits: pd.Series) -> pd.Series:
    """Resolve patients found in several splits: test wins, then val (never leak into train)."""
    rank = {"test": 0, "val": 1, "train": 2}
    best = splits.map(rank).groupby(patients.values).transform("min")
    inverse = {v: k for k, v in rank.items()}
    return best.map(inverse).set_axis(splits.index)
