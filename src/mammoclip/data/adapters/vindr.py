"""VinDr-Mammo 1.0: ``breast-level_annotations.csv`` + ``finding_annotations.csv`` + ``images/``.

One manifest row per image (docs/original.md §8). Image-level labels aggregate **all** finding rows of
the image (an image can have up to 7): ``mass`` = any "Mass", ``calcification`` = any "Suspicious
Calcification", ``distortion`` = any "Architectural Distortion", ``asymmetry`` = any of Asymmetry /
Focal Asymmetry / Global Asymmetry. ``density`` "DENSITY C" -> "C", ``birads`` "BI-RADS 4" -> 4.
Every finding row with a box gives one box row per category in original pixels, with a
``finding_id``. VinDr has no patient id; the study id stands in (as in the original code).
Split: "training" -> train (a patient-level 10 % carved to val), "test" -> test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import carve_val, read_csv
from mammoclip.data.manifest import Bundle, empty_boxes
from mammoclip.errors import DataError

BREAST_FILE = "breast-level_annotations.csv"
FINDING_FILE = "finding_annotations.csv"
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density", "split")
#: VinDr category -> manifest label column (several categories may share one column).
CATEGORY_TO_LABEL: dict[str, str] = {
    "Mass": "mass",
    "Suspicious Calcification": "calcification",
    "Architectural Distortion": "distortion",
    "Asymmetry": "asymmetry",
    "Focal Asymmetry": "asymmetry",
    "Global Asymmetry": "asymmetry",
}
SPLIT_NAMES = {"training": "train", "train": "train", "test": "test"}


def _categories(text: object, where: str) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise DataError(f"{where}: finding_categories {text!r} is not a list literal") from err
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _suffix_value(series: pd.Series, prefix: str) -> pd.Series:
    return series.astype("string").str.upper().str.replace(prefix, "", regex=False).str.strip()


@register_adapter("vindr", "VinDr-Mammo: breast-level_annotations.csv + finding_annotations.csv + images/")
class VinDrAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and (source / BREAST_FILE).exists()

    @staticmethod
    def load(source: Path, *, image_dir: str = "images", suffix: str = ".dicom", seed: int = 0) -> Bundle:
        breast = read_csv(source / BREAST_FILE, BREAST_COLUMNS)
        bad_split = ~breast["split"].isin(SPLIT_NAMES)
        if bad_split.any():
            row = int(np.flatnonzero(bad_split.to_numpy())[0])
            raise DataError(f"{source / BREAST_FILE}: row {row}, column 'split': {breast['split'].iloc[row]!r}")
        images = pd.DataFrame({
            "image_id": breast["image_id"],
            "patient_id": breast["study_id"],
            "study_id": breast["study_id"],
            "laterality": breast["laterality"].str.strip().str.upper(),
            "view": breast["view_position"].str.strip().str.upper(),
            "path": [f"{image_dir}/{s}/{i}{suffix}" for s, i in zip(breast["study_id"], breast["image_id"], strict=True)],
            "split": breast["split"].map(SPLIT_NAMES),
            "source": "vindr",
            "density": _suffix_value(breast["breast_density"], "DENSITY"),
            "birads": pd.to_numeric(_suffix_value(breast["breast_birads"], "BI-RADS"), errors="coerce").astype("Int64"),
        })
        images["split"] = carve_val(images["patient_id"], images["split"], seed=seed)
        boxes = empty_boxes()
        finding_path = source / FINDING_FILE
        if finding_path.exists():
            findings = read_csv(finding_path, ("image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax"))
            labels: dict[str, set[str]] = {col: set() for col in dict.fromkeys(CATEGORY_TO_LABEL.values())}
            box_rows = []
            for idx, (iid, cats, *coords) in enumerate(findings[["image_id", "finding_categories", "xmin", "ymin",
                                                                  "xmax", "ymax"]].itertuples(index=False)):
                categories = _categories(cats, f"{finding_path}: row {idx}")
                for cat in categories:
                    if cat in CATEGORY_TO_LABEL:
                        labels[CATEGORY_TO_LABEL[cat]].add(iid)
                values = pd.to_numeric(pd.Series(coords), errors="coerce")
                if values.notna().all():
                    for cat in categories:
                        if cat != "No Finding":
                            box_rows.append({"image_id": iid, "label": cat, "xmin": values[0], "ymin": values[1],
                                             "xmax": values[2], "ymax": values[3], "space": "original",
                                             "finding_id": f"{iid}_{idx}"})
            annotated = set(findings["image_id"])
            for col, positives in labels.items():
                images[col] = pd.array([(1 if i in positives else 0) if i in annotated else pd.NA
                                        for i in images["image_id"]], dtype="Int64")
            if box_rows:
                boxes = pd.DataFrame(box_rows)
        return Bundle(images=images, boxes=boxes, root=source)
