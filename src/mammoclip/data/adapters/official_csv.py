"""The original Mammo-CLIP image-text tables (docs/original.md §8): one row per breast.

Read: ``patient_id, laterality`` and the images, either ``CC``/``MLO`` (Python-list strings of file
names; the view is the column) or ``image`` + ``view`` (two aligned lists). Each listed image becomes
a manifest row at ``<images>/<patient_id>/<name>`` (the original's layout).

Text: ``text`` is ``[findings, impression]``; where it is missing or empty, the ``findings`` and
``impressions``/``impression`` columns are used. One report per breast with text
(``report_id = <patient>_<laterality>``); ``text_augment`` is kept as an extra column. Breasts without
text get no report (their images have no ``report_id``) and one warning line counts them; with
``require_text`` a table in which no breast has text is refused.

Splits: a ``split`` column wins (:data:`SPLIT_VALUES`: ``training`` -> train, ``test`` -> test,
``val``/``validation`` -> val; with no val in the table, :data:`~mammoclip.data.adapters._common.VAL_FRACTION`
of the training patients become val by hash, as for VinDr); else ``fold`` ``val_fold`` (0) -> val and
the other folds -> train (the original validates on fold 0 and has no test split); else hash splits.

Labels: every column of :data:`~mammoclip.data.adapters._common.LABEL_ALIASES` the table has
(``mass``, ``suspicious_calcification``, ``density``, ``birads``, ``malignant`` ...) is validated and
given to every image of the breast; density may be A-D or the original's 0-3.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import (
    LABEL_ALIASES,
    carve_val,
    normalise_name,
    one_split_per_patient,
    parse_labels,
    read_csv,
    unique_ids,
)
from mammoclip.data.manifest import (
    REPORT_COLUMNS,
    SPLIT_BY_HASH,
    SPLIT_SOURCE_COLUMN,
    Bundle,
    assign_patient_splits,
)
from mammoclip.errors import DataError

log = logging.getLogger(__name__)

COLUMNS = ("patient_id", "laterality")
VIEW_COLUMNS = ("CC", "MLO")
PAIRED_COLUMNS = ("image", "view")
#: Values of a ``split`` column (lower-cased) -> manifest split.
SPLIT_VALUES: dict[str, str] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                                "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


def _literal(text: object, where: str) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if text.strip().startswith("["):
            raise DataError(f"{where}: {text[:60]!r} is not a Python list literal") from None
        return [text]
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _plain(value: object, where: str) -> str:
    """A text cell as one string (a list literal is joined with spaces)."""
    return " ".join(s.strip() for s in _literal(value, where) if s.strip())


def _images_of(rec: pd.Series, paired: bool, where: str) -> list[tuple[str, str]]:
    """``(name, view)`` of every image a row lists."""
    if not paired:
        return [(name, view) for view in VIEW_COLUMNS for name in _literal(rec[view], f"{where}, column {view!r}")]
    names = _literal(rec["image"], f"{where}, column 'image'")
    views = [v.strip().upper() for v in _literal(rec["view"], f"{where}, column 'view'")]
    if len(names) != len(views):
        raise DataError(f"{where}: {len(names)} images but {len(views)} views in 'image'/'view'")
    return list(zip(names, views, strict=True))


def _text_of(rec: pd.Series, columns: dict[str, str | None], where: str) -> tuple[str, str]:
    """``(findings, impression)`` from ``text``, falling back to the separate columns."""
    parts = _literal(rec[columns["text"]], f"{where}, column 'text'") if columns["text"] else []
    findings = parts[0].strip() if parts else ""
    impression = parts[1].strip() if len(parts) > 1 else ""
    if not findings and columns["findings"]:
        findings = _plain(rec[columns["findings"]], f"{where}, column {columns['findings']!r}")
    if not impression and columns["impression"]:
        impression = _plain(rec[columns["impression"]], f"{where}, column {columns['impression']!r}")
    return findings, impression


def _splits(images: pd.DataFrame, source: Path, val_fold: int, seed: int) -> pd.Series:
    """One split per image by the rule in the module docstring."""
    patients = images["patient_id"]
    if images["split_raw"].notna().any():
        raw = images["split_raw"].astype("string").str.strip().str.lower()
        split = raw.map(SPLIT_VALUES)
        bad = split.isna()
        if bad.any():
            values = sorted(set(raw[bad].fillna("(empty)")))
            raise DataError(f"{source}: column 'split': {int(bad.sum())} image(s) with values {values[:5]} "
                            f"not in {sorted(SPLIT_VALUES)}")
        split = one_split_per_patient(patients, split.astype(str))
        return split if (split == "val").any() else carve_val(patients, split, seed=seed)
    if images["fold"].notna().any():
        fold = pd.to_numeric(images["fold"], errors="coerce")
        first = fold.groupby(patients.values).transform("first")
        return (first == val_fold).map({True: "val", False: "train"})
    return patients.map(assign_patient_splits(patients, seed=seed))


@register_adapter("official_csv", "original image-text tables (one row per breast; CC/MLO or image/view lists)")
class OfficialCsvAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        if source.suffix != ".csv" or not source.is_file():
            return False
        with source.open(encoding="utf-8", errors="replace") as fh:
            header = {c.strip() for c in fh.readline().strip().split(",")}
        return set(COLUMNS) <= header and (set(VIEW_COLUMNS) <= header or set(PAIRED_COLUMNS) <= header)

    @staticmethod
    def load(source: Path, *, images: str | Path | None = None, val_fold: int = 0, seed: int = 0,
             require_text: bool = False) -> Bundle:
        """Read one table (module docstring).

        Args:
            images: Folder holding ``<patient_id>/<name>`` (default: the CSV's folder).
            val_fold: The ``fold`` that becomes val when there is no ``split`` column.
            require_text: Refuse a table in which no breast has report text (an image-text bundle).

        Raises:
            DataError: missing columns (named), malformed lists, unknown split values, bad labels, no
                images, or no text with ``require_text``.
        """
        df = read_csv(source, COLUMNS)
        paired = not set(VIEW_COLUMNS) <= set(df.columns)
        if paired and not set(PAIRED_COLUMNS) <= set(df.columns):
            missing = [c for c in VIEW_COLUMNS if c not in df.columns]
            raise DataError(f"{source}: missing columns {missing} (or 'image' and 'view'); has {list(df.columns)}")
        by_name = {normalise_name(c): c for c in df.columns}
        text_columns: dict[str, str | None] = {
            "text": "text" if "text" in df.columns else None,
            "findings": by_name.get("findings"),
            "impression": by_name.get("impressions") or by_name.get("impression"),
        }
        label_cols = [c for c in df.columns if normalise_name(c) in LABEL_ALIASES]
        labels = parse_labels(df[label_cols], str(source), numeric_density=True)
        root = Path(images) if images is not None else source.parent
        rows: list[dict[str, Any]] = []
        reports: list[dict[str, str]] = []
        breasts: set[str] = set()
        for idx, rec in df.iterrows():
            where = f"{source}: row {idx}"
            pid = str(rec["patient_id"]).strip()
            lat = _LATERALITY.get(str(rec["laterality"]).strip().upper())
            if lat is None:
                raise DataError(f"{where}, column 'laterality': {rec['laterality']!r} is not L/R/LEFT/RIGHT")
            findings, impression = _text_of(rec, text_columns, where)
            breasts.add(f"{pid}_{lat}")
            report_id = f"{pid}_{lat}" if findings or impression else pd.NA
            for name, view in _images_of(rec, paired, where):
                rows.append({"image_id": Path(name).stem, "patient_id": pid, "study_id": pid, "laterality": lat,
                             "view": view, "path": str(root / pid / name), "source": "official_csv",
                             "report_id": report_id, "fold": rec.get("fold"), "split_raw": rec.get("split"),
                             **labels.loc[idx].to_dict()})
            if findings or impression:
                reports.append({"report_id": report_id, "findings": findings, "impression": impression,
                                "history": "", "text": f"{findings} {impression}".strip(),
                                "text_augment": rec.get("text_augment", "") if "text_augment" in df.columns else ""})
        if not rows:
            raise DataError(f"{source}: no images listed in the {'image' if paired else 'CC/MLO'} column(s)")
        n_breasts = len(breasts)
        with_text = len({r["report_id"] for r in reports})
        if with_text < n_breasts:
            present = [c for c in text_columns.values() if c]
            if require_text and with_text == 0:
                raise DataError(f"{source}: no breast has report text (text columns present: {present or 'none'}; "
                                f"looked for 'text', 'findings', 'impressions'); not an image-text table")
            log.warning("%s: %d of %d breasts have no report text (text columns present: %s); their images "
                        "get no report", source, n_breasts - with_text, n_breasts, present or "none")
        images_df = pd.DataFrame(rows).drop_duplicates(subset=["path"]).reset_index(drop=True)
        images_df["image_id"] = unique_ids(list(images_df["image_id"]), list(images_df["path"]))
        images_df.insert(6, "split", _splits(images_df, source, val_fold, seed).to_numpy())
        if images_df["split_raw"].isna().all() and images_df["fold"].isna().all():
            images_df[SPLIT_SOURCE_COLUMN] = SPLIT_BY_HASH  # no split or fold in the table: drawn by hash
        images_df = images_df.drop(columns=["fold", "split_raw"])
        for col in labels.columns:
            images_df[col] = images_df[col].astype(labels[col].dtype)
        reps = pd.DataFrame(reports, columns=[*REPORT_COLUMNS, "text_augment"]).drop_duplicates(subset=["report_id"])
        return Bundle(images=images_df, reports=reps.reset_index(drop=True), root=source.parent)
