"""Linear-probe protocol on fixed features: no split leak, selection never sees test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammoclip.errors import DataError
from mammoclip.evaluate import probe as probe_mod
from mammoclip.evaluate.probe import probe_once
from mammoclip.evaluate.tasks import get_task


def _cohort(n_patients: int = 60, seed: int = 0, dim: int = 8) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Patients with 4 images; a positive breast shifts its features along one direction."""
    rng = np.random.default_rng(seed)
    rows, feats, labels = [], [], []
    for p in range(n_patients):
        split = "test" if p % 5 == 0 else ("val" if p % 5 == 1 else "train")
        pos = rng.random() < 0.3
        for lat in "LR":
            for view in ("CC", "MLO"):
                y = int(pos and lat == "L")
                rows.append({"image_id": f"p{p}{lat}{view}", "patient_id": f"p{p}", "laterality": lat,
                             "view": view, "split": split})
                feats.append(rng.normal(size=dim) + 3.0 * y * np.eye(dim)[0])
                labels.append(y)
    return np.array(feats), np.array(labels), pd.DataFrame(rows)


def test_probe_learns_and_selection_never_sees_test(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y, df = _cohort()
    seen: list[set[str]] = []
    real = probe_mod.select_and_fit

    def spy(train, val, n_classes, **kw):  # noqa: ANN001, ANN202 - records what selection is given
        seen.append(set(train.image_ids) | set(val.image_ids))
        assert not set(train.patient_ids) & set(val.patient_ids), "val carved by patient"
        return real(train, val, n_classes, **kw)

    monkeypatch.setattr(probe_mod, "select_and_fit", spy)
    row, probs = probe_once(X, y, df, get_task("mass"), fraction=0.5, seed=1)
    test_ids = set(df.loc[df["split"] == "test", "image_id"])
    assert seen and not seen[0] & test_ids, "model selection touched test images"
    assert probs.shape == ((df["split"] == "test").sum(), 2)
    assert row["test_auc"] > 0.75
    assert row["n_train_patients"] < 48 * 0.5 + 2


def test_probe_fails_on_patient_in_train_and_test() -> None:
    X, y, df = _cohort()
    leaked = df.copy()
    # one image of a training patient is marked test: the patient now spans two splits.
    first_train = leaked.index[leaked["split"] == "train"][0]
    leaked.loc[first_train, "split"] = "test"
    with pytest.raises(DataError, match="split leak"):
        probe_once(X, y, leaked, get_task("mass"), fraction=1.0, seed=0)


def test_multiclass_probe_handles_missing_classes() -> None:
    X, _, df = _cohort(dim=6)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, len(df))  # class 3 (D) never occurs
    X = X + 2.0 * np.eye(6)[y]
    row, probs = probe_once(X, y, df, get_task("density"), fraction=1.0, seed=0)
    assert probs.shape[1] == 4 and np.allclose(probs[:, 3], 0)
    assert row["test_accuracy"] > 0.6
