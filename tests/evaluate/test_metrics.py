"""Metrics against scikit-learn, hand-made cases, breast aggregation and bootstrap coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mammoclip.evaluate.metrics import (
    aggregate_by_breast,
    binary_metrics,
    bootstrap_metrics,
    expected_calibration_error,
    group_bootstrap_indices,
    multiclass_metrics,
    roc_band,
    sensitivity_at_specificity,
)


def _sklearn_sens_at_spec(y: np.ndarray, s: np.ndarray, spec: float) -> float:
    fpr, tpr, _ = skm.roc_curve(y, s)
    ok = fpr <= 1 - spec + 1e-12
    return float(tpr[ok].max())


# Rounding to 1 or 2 decimals makes many tied scores (sklearn's tie handling must be matched too).
@pytest.mark.parametrize("seed,decimals,n", [(0, None, 300), (1, None, 300), (2, 2, 300), (3, 1, 300), (4, 1, 12),
                                             (5, 2, 2000)])
def test_binary_metrics_match_sklearn(seed: int, decimals: int | None, n: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    s = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    if decimals is not None:
        s = np.round(s, decimals)
    m = binary_metrics(y, s, threshold=0.5)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, s >= 0.5))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, s >= 0.5))
    for spec in (0.5, 0.8, 0.9, 0.95, 1.0):
        assert sensitivity_at_specificity(y, s, spec) == pytest.approx(_sklearn_sens_at_spec(y, s, spec), abs=1e-12)


def test_binary_metrics_hand_made() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
    m = binary_metrics(y, s)
    # 8 positive-negative pairs, one inverted (0.7 > 0.6): AUC = 7/8.
    assert m["auc"] == pytest.approx(7 / 8)
    # specificity >= 0.75 allows one false positive (0.7): then both positives are above -> 1.0.
    assert sensitivity_at_specificity(y, s, 0.75) == pytest.approx(1.0)
    # specificity 1.0: threshold above 0.7 keeps only 0.9 -> sensitivity 0.5.
    assert sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.5)
    assert np.isnan(binary_metrics(np.zeros(4), np.linspace(0, 1, 4))["auc"])


def test_ece_hand_made() -> None:
    # perfectly calibrated bins: confidence 0.25 with 1/4 positives, 0.75 with 3/4 positives.
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    # all predicted 0.9, none positive -> ECE 0.9.
    assert expected_calibration_error(np.zeros(5), np.full(5, 0.9)) == pytest.approx(0.9)
    # multi-class top-label: confident and always right -> 1 - confidence.
    probs = np.array([[0.8, 0.2], [0.2, 0.8]])
    assert expected_calibration_error(np.array([0, 1]), probs) == pytest.approx(0.2)


def test_multiclass_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = multiclass_metrics(y, p)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_aggregate_by_breast_max_and_mean() -> None:
    df = pd.DataFrame({
        "patient_id": ["p1", "p1", "p1", "p1", "p2", "p2"],
        "laterality": ["L", "L", "R", "R", "L", "L"],
        "label": [0, 1, 0, 0, 0, 0],
        "score": [0.2, 0.8, 0.1, 0.3, 0.4, 0.6],
    })
    mx = aggregate_by_breast(df, ["score"], how="max").set_index("breast_id")
    mean = aggregate_by_breast(df, ["score"], how="mean").set_index("breast_id")
    assert list(mx.index) == ["p1_L", "p1_R", "p2_L"]
    assert mx.loc["p1_L", "label"] == 1 and mx.loc["p1_R", "label"] == 0
    assert mx.loc["p1_L", "score"] == pytest.approx(0.8)
    assert mean.loc["p2_L", "score"] == pytest.approx(0.5)
    assert (mx["n_views"] == 2).all()


def test_group_bootstrap_keeps_patients_whole() -> None:
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    for idx in group_bootstrap_indices(groups, 50, seed=0):
        drawn = groups[idx]
        for g in np.unique(drawn):
            # each draw of a patient brings all its rows: the count is a multiple of its size.
            assert (drawn == g).sum() % (groups == g).sum() == 0
        assert len(np.unique(idx[groups[idx] == "a"])) in (0, 3)


def test_bootstrap_ci_coverage_near_nominal() -> None:
    """Simulation: the 95% patient-bootstrap CI of accuracy covers the true value ~95% of the time.

    Each patient has 2 correlated images (same correctness with prob 0.5), which is what the
    patient-level resampling must respect; kept cheap (60 trials x 200 replicates).
    """
    true_acc = 0.7
    covered = 0
    trials = 60
    rng = np.random.default_rng(0)

    def acc(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean((s >= 0.5) == y))}

    for t in range(trials):
        n_pat = 80
        first = rng.random(n_pat) < true_acc
        second = np.where(rng.random(n_pat) < 0.5, first, rng.random(n_pat) < true_acc)
        correct = np.stack([first, second], 1).ravel()
        y = np.ones(2 * n_pat, dtype=int)
        s = correct.astype(float)
        groups = np.repeat(np.arange(n_pat), 2)
        est = bootstrap_metrics(acc, y, s, groups, n_boot=200, seed=t)["accuracy"]
        covered += est.ci_low <= true_acc <= est.ci_high
    assert 0.85 <= covered / trials <= 1.0


def test_roc_band_contains_curve() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    s = y * 0.5 + rng.random(120)
    band = roc_band(y, s, np.arange(120) // 2, n_boot=50)
    assert band["fpr"].shape == band["tpr"].shape == (101,)
    assert (band["tpr_low"] <= band["tpr_high"] + 1e-12).all()
    assert band["tpr"][-1] == pytest.approx(1.0)
