"""CBIS-DDSM case descriptions: ``{mass,calc}_case_description_{train,test}_set.csv``.

One CSV row per abnormality; one manifest row per image (the first folder of ``image file path``,
e.g. ``Mass-Training_P_00001_LEFT_CC``). Labels: ``mass``/``calcification`` from the abnormality
type, ``malignant`` = any MALIGNANT abnormality, ``birads`` = the highest assessment, ``density``
1-4 -> A-D. Split from the file name (train/test) with a patient-level val carved from train; a
patient in both the train and test files goes to test (no leak). Image paths are the CSV's
``image file path`` relative to the source folder; ROI masks are listed in ``boxes.csv`` only when a
box is known, so boxes are not produced here (CBIS-DDSM gives masks, not boxes).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import carve_val, one_split_per_patient, read_csv
from mammoclip.data.manifest import Bundle
from mammoclip.errors import DataError

PATTERN = "*_case_description_*_set.csv"
DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}
COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality type", "pathology", "image file path")


@register_adapter("cbis_ddsm", "CBIS-DDSM: {mass,calc}_case_description_{train,test}_set.csv")
class CbisDdsmAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and any(source.glob(PATTERN))

    @staticmethod
    def load(source: Path, *, seed: int = 0) -> Bundle:
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
        return Bundle(images=images, root=source)
