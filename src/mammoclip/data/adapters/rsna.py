"""RSNA Screening Mammography: ``train.csv`` + ``train_images/<patient_id>/<image_id>.dcm``.

``cancer`` -> ``malignant``; ``density`` A-D kept; ``BIRADS`` (0-2, often empty) -> ``birads``.
RSNA has no study id (the patient id stands in) and no test split: splits are assigned per patient
by hash, or, when the CSV has a ``fold`` column (the original's ``train_folds.csv``), fold
``val_fold`` becomes ``val`` and the rest ``train``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import read_csv
from mammoclip.data.manifest import SPLIT_BY_HASH, SPLIT_SOURCE_COLUMN, Bundle, assign_patient_splits

CSV_NAMES = ("train.csv", "train_folds.csv")
COLUMNS = ("patient_id", "image_id", "laterality", "view", "cancer")


@register_adapter("rsna", "RSNA screening: train.csv + train_images/<patient>/<image>.dcm")
class RsnaAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and any((source / n).exists() for n in CSV_NAMES) and (source / "train_images").is_dir()

    @staticmethod
    def load(source: Path, *, csv: str | None = None, image_dir: str = "train_images", val_fold: int | None = 0,
             fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0) -> Bundle:
        name = csv or next((n for n in CSV_NAMES if (source / n).exists()), CSV_NAMES[0])
        df = read_csv(source / name, COLUMNS)
        images = pd.DataFrame({
            "image_id": df["image_id"],
            "patient_id": df["patient_id"],
            "study_id": df["patient_id"],
            "laterality": df["laterality"].str.strip().str.upper(),
            "view": df["view"].str.strip().str.upper(),
            "path": [f"{image_dir}/{p}/{i}.dcm" for p, i in zip(df["patient_id"], df["image_id"], strict=True)],
            "source": "rsna",
            "malignant": pd.to_numeric(df["cancer"], errors="coerce").astype("Int64"),
        })
        if "density" in df.columns:
            images["density"] = df["density"].astype("string").str.strip().str.upper()
        if "BIRADS" in df.columns:
            images["birads"] = pd.to_numeric(df["BIRADS"], errors="coerce").astype("Int64")
        if "fold" in df.columns and val_fold is not None:
            fold = pd.to_numeric(df["fold"], errors="coerce")
            # A patient's images share one fold in the original; take each patient's first to be safe.
            first = fold.groupby(df["patient_id"].values).transform("first")
            images.insert(6, "split", (first == val_fold).map({True: "val", False: "train"}).values)
        else:
            splits = assign_patient_splits(images["patient_id"], fractions, seed)
            images.insert(6, "split", images["patient_id"].map(splits))
            images[SPLIT_SOURCE_COLUMN] = SPLIT_BY_HASH
        return Bundle(images=images, root=source)
