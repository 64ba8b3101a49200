"""Helpers shared by the adapters: reading CSVs with clear errors, carving a patient-level val split,
injective image ids and the label columns of source tables."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from mammoclip.data.manifest import assign_patient_splits, read_table_csv
from mammoclip.errors import DataError

#: Share of training patients moved to ``val`` when a source has only train/test.
VAL_FRACTION: float = 0.1


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a source CSV as strings and check its columns.

    Reading goes through :func:`~mammoclip.data.manifest.read_table_csv`, so a table in another
    encoding than UTF-8 gets the same one-line message (file, line, byte, fix) as the manifest.

    Raises:
        DataError: missing file, not UTF-8, unparsable CSV or missing columns (all named).
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    df = read_table_csv(path, "source table", dtype=str, keep_default_na=False, na_values=[""])
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


# --- Injective image ids ------------------------------------------------------------------------------
#: Marks an id made unique by a hash suffix. A plain id never contains it (ids that do are hashed too),
#: so a plain id can never equal a hashed one.
ID_HASH_MARK: str = "~"


def short_hash(text: str, length: int = 10) -> str:
    """A short, stable hex digest of ``text`` (for ids, not for security)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def unique_ids(plain: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Make readable ids injective: every id shared by several keys gets ``~<hash of its key>``.

    ``plain`` ids are what a source naturally suggests (``<patient>_<study>_<stem>``, a file name), and
    they can collide (``P_1/S/x.dcm`` and ``P/1_S/x.dcm``). ``keys`` are distinct (relative paths), so
    the hashed ids are distinct up to a 40-bit hash collision; ids that already contain
    :data:`ID_HASH_MARK` are hashed as well, so that no plain id can equal a hashed one. Ids that do
    not collide are kept as they are, which keeps every existing manifest's ids unchanged.
    """
    if len(set(keys)) != len(keys):
        raise ValueError("unique_ids needs distinct keys")
    counts = Counter(plain)
    return [p if counts[p] == 1 and ID_HASH_MARK not in p else f"{p}{ID_HASH_MARK}{short_hash(k)}"
            for p, k in zip(plain, keys, strict=True)]


# --- Label columns of source tables ---------------------------------------------------------------------
#: Source column names (normalised by :func:`normalise_name`) that carry a manifest label. Several
#: columns may feed one label (focal and global asymmetry both mean ``asymmetry``): binary labels are
#: OR-ed, BI-RADS takes the highest, density the first value present.
LABEL_ALIASES: dict[str, str] = {
    "mass": "mass", "masses": "mass",
    "calcification": "calcification", "calcifications": "calcification", "calc": "calcification",
    "suspicious_calcification": "calcification",
    "distortion": "distortion", "architectural_distortion": "distortion",
    "asymmetry": "asymmetry", "focal_asymmetry": "asymmetry", "global_asymmetry": "asymmetry",
    "malignant": "malignant", "malignancy": "malignant", "cancer": "malignant",
    "density": "density", "breast_density": "density",
    "birads": "birads", "bi_rads": "birads", "breast_birads": "birads", "birads_numeric": "birads",
    "birads_category": "birads",
}
_TRUE = frozenset({"1", "1.0", "true", "yes", "y", "positive", "pos"})
_FALSE = frozenset({"0", "0.0", "false", "no", "n", "negative", "neg"})
_BIRADS = re.compile(r"^(?:BI[-_ ]?RADS)?[:\s]*([0-6])(?:\.0)?\s*[ABC]?$")
_DENSITY = re.compile(r"^(?:DENSITY)?[:\s]*([A-D])$")


def normalise_name(name: str) -> str:
    """``"Suspicious Calcification"`` -> ``"suspicious_calcification"`` (case and punctuation-free)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def _binary(value: str, numeric_density: bool) -> object:
    v = value.lower()
    return 1 if v in _TRUE else 0 if v in _FALSE else None


def _birads(value: str, numeric_density: bool) -> object:
    m = _BIRADS.match(value.upper())
    return int(m.group(1)) if m else None


def _density(value: str, numeric_density: bool) -> object:
    m = _DENSITY.match(value.upper())
    if m:
        return m.group(1)
    if numeric_density and value in ("0", "1", "2", "3", "0.0", "1.0", "2.0", "3.0"):
        return "ABCD"[int(float(value))]
    return None


_EXPECTED = {"density": "A-D or 'DENSITY A'", "birads": "0-6 or 'BI-RADS 4' (4a-4c -> 4)"}
_PARSERS = {"density": _density, "birads": _birads}


def parse_labels(table: pd.DataFrame, where: str, *, numeric_density: bool = False) -> pd.DataFrame:
    """The manifest label columns found in ``table`` (by :data:`LABEL_ALIASES`), validated.

    Binary labels accept 0/1, true/false, yes/no; density A-D (``numeric_density``: also 0-3, the
    original tables' coding, docs/original.md §8); BI-RADS 0-6 with an optional ``BI-RADS`` prefix
    and subcategory. Empty cells stay empty (unknown).

    Returns:
        One column per label found (``Int64`` for binary labels and BI-RADS, ``string`` for
        density), on ``table``'s index; no columns when the table has no label column.

    Raises:
        DataError: a value outside the label's vocabulary (column, count and the first bad row named).
    """
    parsed: dict[str, list[pd.Series]] = {}
    for col in table.columns:
        label = LABEL_ALIASES.get(normalise_name(col))
        if label is None:
            continue
        parse = _PARSERS.get(label, _binary)
        raw = table[col].astype("string").str.strip()
        present = raw.notna() & (raw != "")
        values = pd.Series([parse(str(v), numeric_density) if ok else pd.NA for v, ok in zip(raw, present,
                                                                                            strict=True)],
                           index=table.index, dtype=object)
        bad = present & values.isna()
        if bad.any():
            first = bad.idxmax()
            expected = _EXPECTED.get(label, "0/1, true/false or yes/no")
            raise DataError(f"{where}: column {col!r} ({label}): {int(bad.sum())} value(s) not in {expected}, "
                            f"first at row {first}: {raw[first]!r}")
        parsed.setdefault(label, []).append(values)
    out = pd.DataFrame(index=table.index)
    for label, series in parsed.items():
        if label == "density":
            merged = series[0]
            for s in series[1:]:
                merged = merged.where(merged.notna(), s)
            out[label] = merged.astype("string")
        else:
            numbers = pd.concat([s.astype("Float64") for s in series], axis=1)
            out[label] = numbers.max(axis=1, skipna=True).astype("Int64")
    return out
