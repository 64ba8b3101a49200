"""The official image-text CSV (docs/original.md §8, ``clip_pretrain_100.csv``): one row per breast.

Columns ``patient_id, laterality, image, view, CC, MLO, text, text_augment, fold``: ``CC``/``MLO`` are
Python-list strings of image file names, ``text`` is ``[findings, impression]``. Each listed image
becomes a manifest row (view from the column it is listed in), at
``<images>/<patient_id>/<name>`` (the original's layout). One report per breast
(``report_id = <patient>_<laterality>``) with findings/impression from ``text``; ``text_augment`` is
kept as an extra column. ``fold`` 0 -> val (the original validates on fold 0), others -> train.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import read_csv
from mammoclip.data.manifest import REPORT_COLUMNS, Bundle, assign_patient_splits
from mammoclip.errors import DataError

COLUMNS = ("patient_id", "laterality", "CC", "MLO")


def _literal(text: object, where: str) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.strip().startswith("["):
            raise DataError(f"{where}: {text[:60]!r} is not a Python list literal") from None
        return [text]
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


@register_adapter("official_csv", "official image-text CSV (one row per breast, CC/MLO lists)")
class OfficialCsvAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        if source.suffix != ".csv" or not source.is_file():
            return False
        header = source.open(encoding="utf-8", errors="replace").readline()
        return all(c in header for c in COLUMNS)

    @staticmethod
    def load(source: Path, *, images: str | Path | None = None, val_fold: int = 0, seed: int = 0) -> Bundle:
        df = read_csv(source, COLUMNS)
        root = Path(images) if images is not None else source.parent
        rows, reports = [], []
        for idx, rec in df.iterrows():
            where = f"{source}: row {idx}"
            pid, lat = str(rec["patient_id"]), str(rec["laterality"]).strip().upper()[:1]
            report_id = f"{pid}_{lat}"
            for view in ("CC", "MLO"):
                for name in _literal(rec[view], f"{where}, column {view!r}"):
                    rows.append({"image_id": Path(name).stem, "patient_id": pid, "study_id": pid,
                                 "laterality": lat, "view": view, "path": str(root / pid / name),
                                 "source": "official_csv", "report_id": report_id,
                                 "fold": rec.get("fold")})
            text = _literal(rec.get("text"), f"{where}, column 'text'") if "text" in df.columns else []
            findings = text[0] if text else ""
            impression = text[1] if len(text) > 1 else ""
            reports.append({"report_id": report_id, "findings": findings, "impression": impression,
                            "history": "", "text": f"{findings} {impression}".strip(),
                            "text_augment": rec.get("text_augment", "") if "text_augment" in df.columns else ""})
        if not rows:
            raise DataError(f"{source}: no images listed in the CC/MLO columns")
        images_df = pd.DataFrame(rows).drop_duplicates(subset=["image_id"]).reset_index(drop=True)
        if images_df["fold"].notna().any():
            fold = pd.to_numeric(images_df["fold"], errors="coerce")
            first = fold.groupby(images_df["patient_id"].values).transform("first")
            split = (first == val_fold).map({True: "val", False: "train"})
        else:
            split = images_df["patient_id"].map(assign_patient_splits(images_df["patient_id"], seed=seed))
        images_df.insert(6, "split", split.values)
        images_df = images_df.drop(columns=["fold"])
        reps = pd.DataFrame(reports).drop_duplicates(subset=["report_id"])
        reps = reps[list(REPORT_COLUMNS) + ["text_augment"]].reset_index(drop=True)
        return Bundle(images=images_df, reports=reps, root=source.parent)
