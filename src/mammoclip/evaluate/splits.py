"""Patient-level label fractions, validation carving and split-leak guards.

The original samples label fractions per *row* (``train_folds.sample(frac)``), so one patient's
images can be split between "labelled" and "unlabelled", and it selects the best epoch on the test
split (docs/original.md §6.2). Everything here works on whole patients, and :func:`assert_disjoint`
is called before any fit so that a leak is an error, not a number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammoclip.errors import DataError

#: Share of the (fraction-sampled) training patients held out for model selection.
DEFAULT_VAL_FRACTION: float = 0.2


def _patient_strata(images: pd.DataFrame, labels: np.ndarray) -> pd.Series:
    """One stratum per patient: its highest label index (binary: does it have a positive image?)."""
    return pd.Series(labels, index=images.index).groupby(images["patient_id"].astype(str).to_numpy()).max()


def _stratified_pick(strata: pd.Series, fraction: float, rng: np.random.Generator) -> set[str]:
    """Pick ``fraction`` of the patients of every stratum (at least one per non-empty stratum)."""
    chosen: set[str] = set()
    for _, members in strata.groupby(strata):
        ids = np.array(sorted(members.index))
        n = max(1, int(round(fraction * len(ids))))
        chosen.update(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())
    return chosen


def sample_patients(images: pd.DataFrame, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row mask of a label fraction drawn by patient, stratified on the patient's label.

    Args:
        images: Manifest rows (the training pool) with ``patient_id``.
        labels: ``(N,)`` label indices (-1 = missing, ignored when stratifying).
        fraction: Share of patients kept, in (0, 1].
        seed: Seed; the same (pool, fraction, seed) always gives the same patients.

    Returns:
        ``(N,)`` boolean mask of the rows of the chosen patients.
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.ones(len(images), dtype=bool)
    strata = _patient_strata(images, labels)
    chosen = _stratified_pick(strata, fraction, np.random.default_rng(seed))
    return images["patient_id"].astype(str).isin(chosen).to_numpy()


def carve_validation(
    images: pd.DataFrame, labels: np.ndarray, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0
) -> np.ndarray:
    """Row mask of a validation set carved from training rows by patient (stratified).

    Every stratum with at least two patients keeps one in training; a stratum with a single patient
    stays in training.

    Returns:
        ``(N,)`` boolean mask, True for validation rows.
    """
    strata = _patient_strata(images, labels)
    rng = np.random.default_rng(seed + 7919)
    chosen: set[str] = set()
    for _, members in strata.groupby(strata):
        ids = np.array(sorted(members.index))
        if len(ids) < 2:
            continue
        n = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
        chosen.update(rng.choice(ids, size=n, replace=False).tolist())
    return images["patient_id"].astype(str).isin(chosen).to_numpy()


def assert_disjoint(named_parts: dict[str, pd.DataFrame]) -> None:
    """Fail when a patient appears in more than one of the given parts.

    Raises:
        DataError: naming the parts and a few shared patients.
    """
    seen: dict[str, str] = {}
    for name, part in named_parts.items():
        for pid in pd.unique(part["patient_id"].astype(str)):
            if pid in seen and seen[pid] != name:
                shared = [p for p in pd.unique(part["patient_id"].astype(str)) if seen.get(p, name) != name]
                raise DataError(
                    f"split leak: patient(s) {shared[:5]} appear in both {seen[pid]!r} and {name!r}; "
                    "fix the manifest's split column (splits must be assigned per patient)"
                )
            seen[pid] = name
