"""Task registry, patient-level label fractions, validation carving and leak guards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate.splits import assert_disjoint, carve_validation, sample_patients
from mammoclip.evaluate.tasks import get_task, task_labels


def _pool(n_patients: int = 50, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.random(n_patients) < 0.1
    rows = []
    for p in range(n_patients):
        for view in range(4):
            rows.append({"patient_id": f"p{p}", "laterality": "LR"[view // 2], "mass": int(pos[p] and view == 0)})
    df = pd.DataFrame(rows)
    return df, df["mass"].to_numpy()


def test_task_registry_and_labels() -> None:
    assert get_task("malignancy").column == "malignant"
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("spiculation")
    df = pd.DataFrame({"density": ["A", None, "D"], "mass": pd.array([1, None, 0], dtype="Int64")})
    assert task_labels(df, get_task("density")).tolist() == [0, -1, 3]
    assert task_labels(df, get_task("mass")).tolist() == [1, -1, 0]
    with pytest.raises(DataError, match="no column 'birads'"):
        task_labels(df, get_task("birads"))


def test_fraction_sampling_is_by_patient_stratified_and_seeded() -> None:
    df, y = _pool()
    mask = sample_patients(df, y, 0.1, seed=3)
    chosen = set(df.loc[mask, "patient_id"])
    # whole patients only: every chosen patient brings all 4 images.
    assert mask.sum() == 4 * len(chosen)
    assert y[mask].max() == 1, "the rare positive stratum is represented"
    assert np.array_equal(mask, sample_patients(df, y, 0.1, seed=3))
    assert not np.array_equal(mask, sample_patients(df, y, 0.1, seed=4))
    assert sample_patients(df, y, 1.0, seed=0).all()
    with pytest.raises(DataError):
        sample_patients(df, y, 0.0, seed=0)


def test_carved_validation_is_patient_disjoint() -> None:
    df, y = _pool()
    val = carve_validation(df, y, 0.2, seed=0)
    assert 0 < val.sum() < len(df)
    assert not set(df.loc[val, "patient_id"]) & set(df.loc[~val, "patient_id"])
    assert y[~val].max() == 1


def test_assert_disjoint_detects_a_shared_patient() -> None:
    a = pd.DataFrame({"patient_id": ["p1", "p2"]})
    b = pd.DataFrame({"patient_id": ["p3", "p2"]})
    assert_disjoint({"train": a, "test": pd.DataFrame({"patient_id": ["p3"]})})
    with pytest.raises(DataError, match="split leak.*p2"):
        assert_disjoint({"train": a, "test": b})
