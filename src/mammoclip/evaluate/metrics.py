"""Classification metrics, per-breast aggregation and patient-level bootstrap confidence intervals.

The original code reports one AUC per image (VinDr even per *finding row*, so images with several
findings count several times) and no uncertainty at all (docs/original.md §6.1-6.2). Here every metric
can be computed per image or per breast (patient x laterality, max or mean over the views), and
comes with a bootstrap 95% interval whose resampling unit is the **patient**: images of one patient
are correlated, and resampling images would give intervals that are too narrow.

scikit-learn computes every metric that it has; the hand-written pieces are the ones it lacks
(sensitivity at a fixed specificity, expected calibration error, the grouped bootstrap).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mammoclip.data.manifest import breast_key

#: Specificity at which the binary report quotes sensitivity (a screening operating point:
#: 90% of normal breasts are not recalled).
DEFAULT_SPECIFICITY: float = 0.9
#: Equal-width bins of the expected calibration error (Guo et al. 2017 use 15; 10 is common too).
ECE_BINS: int = 10
#: Bootstrap replicates for the 95% intervals (percentile method).
DEFAULT_BOOTSTRAP: int = 1000


def _as_binary(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true).astype(int)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary metrics need labels in {0, 1}")
    return y


def _binary_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive counts at each distinct score, highest first (as scikit-learn's
    ``_binary_clf_curve``): one stable sort, then cumulative sums at the last row of each tie."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # last index of each distinct score
    tps = np.cumsum(y_sorted)[last].astype(float)
    fps = (last + 1) - tps
    return fps, tps


def _roc(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fpr, tpr`` from :func:`_binary_curve` counts: the points of ``sklearn.metrics.roc_curve``
    (collinear points dropped, (0, 0) first)."""
    if len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def _tpr_at_fpr_bound(fpr: np.ndarray, tpr: np.ndarray, specificity: float) -> float:
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def sensitivity_at_specificity(y_true: np.ndarray, y_score: np.ndarray, specificity: float = DEFAULT_SPECIFICITY) -> float:
    """Largest true-positive rate among thresholds whose specificity is at least ``specificity``.

    scikit-learn has no such function; it is read off the ROC curve (the same points as
    :func:`sklearn.metrics.roc_curve`).
    """
    y = _as_binary(y_true)
    return _tpr_at_fpr_bound(*_roc(*_binary_curve(y, np.asarray(y_score, dtype=float))), specificity)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width confidence bins.

    Args:
        y_true: ``(N,)`` labels (0/1 for binary, class indices for multi-class).
        probs: ``(N,)`` positive-class probabilities (binary: calibration of P(y=1)) or ``(N, K)``
            class probabilities (multi-class: top-label confidence against correctness).
        n_bins: Number of equal-width bins on [0, 1].

    Returns:
        sum over bins of (bin share) x |observed frequency - mean confidence|.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if p.ndim == 1:
        conf, hit = p, (y == 1).astype(float)
    else:
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    if len(conf) == 0:
        return float("nan")
    # bin i covers (i/n, (i+1)/n]; confidence 0 falls into the first bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def binary_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    threshold: float = 0.5,
    specificity: float = DEFAULT_SPECIFICITY,
) -> dict[str, float]:
    """Every binary metric of the report for one set of predictions.

    Args:
        y_true: ``(N,)`` 0/1 labels.
        y_score: ``(N,)`` positive-class probabilities in [0, 1].
        threshold: Decision threshold for accuracy and balanced accuracy.
        specificity: Operating point of ``sensitivity_at_spec``.

    Returns:
        ``auc``, ``auprc``, ``accuracy``, ``balanced_accuracy``, ``sensitivity_at_spec``, ``ece``
        (AUC-type metrics are NaN when only one class is present).
    """
    # One sort serves AUC, AUPRC and the operating point. scikit-learn computes the same numbers
    # (tests/evaluate/test_metrics.py checks it, ties included), but its per-call input validation
    # made a 500-replicate patient bootstrap take ~10 ms per replicate; this is ~10x faster.
    y = _as_binary(y_true)
    s = np.asarray(y_score, dtype=float)
    pred = s >= threshold
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int(len(y) - pos.sum())
    both = n_pos > 0 and n_neg > 0
    out = {"auc": float("nan"), "auprc": float("nan"), "accuracy": float(np.mean(pred == pos)) if len(y) else float("nan"),
           "balanced_accuracy": float("nan"), "sensitivity_at_spec": float("nan"), "ece": expected_calibration_error(y, s)}
    if both:
        fps, tps = _binary_curve(y, s)
        fpr, tpr = np.r_[0.0, fps] / n_neg, np.r_[0.0, tps] / n_pos
        out["auc"] = float(np.trapezoid(tpr, fpr))
        precision = tps / (tps + fps)
        out["auprc"] = float(np.sum(np.diff(np.r_[0.0, tps / n_pos]) * precision))  # step-wise AP, as sklearn
        out["balanced_accuracy"] = float((np.mean(pred[pos]) + np.mean(~pred[~pos])) / 2)
        out["sensitivity_at_spec"] = _tpr_at_fpr_bound(*_roc(fps, tps), specificity)
    return out


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Multi-class metrics (density, BI-RADS) from ``(N, K)`` class probabilities.

    Returns:
        ``accuracy`` and ``balanced_accuracy`` of the argmax, ``macro_f1`` over the K classes,
        ``auc`` (one-vs-rest macro AUC over the classes present, NaN with fewer than two) and ``ece``.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=float)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    present = np.unique(y)
    if len(present) >= 2:
        # macro one-vs-rest AUC over the classes that occur (sklearn's multi_class="ovr" needs all K).
        auc = float(np.mean([skm.roc_auc_score((y == c).astype(int), p[:, c]) for c in present]))
    else:
        auc = float("nan")
    with warnings.catch_warnings():
        # a bootstrap replicate may lack a class that is predicted: expected, not worth a warning.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(skm.balanced_accuracy_score(y, pred))
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(skm.f1_score(y, pred, labels=list(range(k)), average="macro", zero_division=0)),
        "auc": auc,
        "ece": expected_calibration_error(y, p),
    }


# --- per-breast aggregation ------------------------------------------------------------------------

#: How views of one breast are combined. "max": a finding seen in any view counts (the clinical
#: reading); "mean": the RSNA convention of the original (docs/original.md §6.2).
AGGREGATIONS: dict[str, str] = {"max": "max", "mean": "mean"}


def aggregate_by_breast(
    predictions: pd.DataFrame,
    score_columns: list[str],
    *,
    how: str = "max",
    label_column: str = "label",
) -> pd.DataFrame:
    """Combine per-image predictions into one row per breast (patient x laterality).

    Args:
        predictions: One row per image with ``patient_id``, ``laterality``, ``label_column`` and
            the ``score_columns``.
        score_columns: Probability columns (one for binary, K for multi-class).
        how: ``"max"`` or ``"mean"`` over the views. Multi-class probabilities are renormalised
            to sum to 1 after ``max``.
        label_column: The label; a breast takes the maximum of its views' labels (a finding in
            any view makes the breast positive; density is the same on every view).

    Returns:
        One row per breast: ``breast_id, patient_id, laterality, n_views``, the label and scores.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {sorted(AGGREGATIONS)}, got {how!r}")
    df = predictions.copy()
    df["breast_id"] = breast_key(df)
    grouped = df.groupby("breast_id", sort=True)
    out = grouped.agg(
        patient_id=("patient_id", "first"),
        laterality=("laterality", "first"),
        n_views=("breast_id", "size"),
        **{label_column: (label_column, "max")},
        **{c: (c, AGGREGATIONS[how]) for c in score_columns},
    ).reset_index()
    if how == "max" and len(score_columns) > 1:
        total = out[score_columns].sum(axis=1).replace(0, 1.0)
        out[score_columns] = out[score_columns].div(total, axis=0)
    return out


# --- bootstrap -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric with its bootstrap percentile interval."""

    value: float
    ci_low: float
    ci_high: float
    #: Replicates in which the metric was defined (e.g. both classes present for AUC).
    n_valid: int

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n_boot": self.n_valid}


def group_bootstrap_indices(groups: np.ndarray, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n_boot`` replicates that resample whole groups (patients) with replacement.

    Returns:
        One index array per replicate; a patient drawn twice contributes all its rows twice.
    """
    codes, uniques = pd.factorize(np.asarray(groups))
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(uniques), size=len(uniques))
        out.append(np.concatenate([order[starts[g] : starts[g] + counts[g]] for g in chosen]))
    return out


def bootstrap_metrics(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    y_true: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Point estimates and patient-level bootstrap percentile intervals of every metric.

    Args:
        metric_fn: ``(y_true, scores) -> {name: value}``, e.g. :func:`binary_metrics`.
        y_true: ``(N,)`` labels.
        scores: ``(N,)`` or ``(N, K)`` scores.
        groups: ``(N,)`` resampling unit of each row (the patient id).
        n_boot: Replicates; 0 gives NaN intervals.
        alpha: 1 - confidence level.
        seed: Seed of the resampling.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores)
    point = metric_fn(y, s)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for idx in group_bootstrap_indices(np.asarray(groups), n_boot, seed) if n_boot > 0 else []:
        for k, v in metric_fn(y[idx], s[idx]).items():
            if np.isfinite(v):
                samples[k].append(v)
    out = {}
    for k, v in point.items():
        vals = np.asarray(samples[k])
        if len(vals):
            lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
        else:
            lo = hi = float("nan")
        out[k] = Estimate(float(v), float(lo), float(hi), len(vals))
    return out


def roc_band(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    grid: int = 101,
) -> dict[str, np.ndarray]:
    """ROC curve with a pointwise patient-bootstrap band (TPR interpolated on a fixed FPR grid).

    Returns:
        ``fpr`` (grid), ``tpr`` (full-data curve on the grid), ``tpr_low``, ``tpr_high``.
    """
    y = _as_binary(y_true)
    s = np.asarray(y_score, dtype=float)
    fpr_grid = np.linspace(0.0, 1.0, grid)

    def curve(yy: np.ndarray, ss: np.ndarray) -> np.ndarray:
        fpr, tpr, _ = skm.roc_curve(yy, ss)
        return np.interp(fpr_grid, fpr, tpr)

    base = curve(y, s)
    reps = [curve(y[i], s[i]) for i in group_bootstrap_indices(np.asarray(groups), n_boot, seed) if len(np.unique(y[i])) == 2]
    if reps:
        lo, hi = np.quantile(np.stack(reps), [alpha / 2, 1 - alpha / 2], axis=0)
    else:
        lo = hi = base
    return {"fpr": fpr_grid, "tpr": base, "tpr_low": lo, "tpr_high": hi}


# --- one call for a predictions table ----------------------------------------------------------------


def score_columns(class_names: list[str]) -> list[str]:
    """Names of the probability columns of a predictions table (``p_<class>``)."""
    return [f"p_{c}" for c in class_names]


def evaluate_predictions(
    predictions: pd.DataFrame,
    class_names: list[str],
    *,
    aggregate: str = "max",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-image and per-breast metrics with patient-bootstrap intervals for a predictions table.

    Args:
        predictions: One row per image: ``patient_id``, ``laterality``, ``label`` (class index,
            -1 = unlabelled, dropped) and the :func:`score_columns`.
        class_names: Class names in label-index order (two for a binary task: index 1 positive).
        aggregate: View aggregation for the per-breast level (``max`` or ``mean``).
        n_boot: Bootstrap replicates.
        seed: Bootstrap seed.

    Returns:
        ``{"image": {metric: {value, ci_low, ci_high, n_boot}}, "breast": {...}, "n_images",
        "n_breasts", "n_patients"}`` plus the per-breast table under ``"breast_table"``.
    """
    cols = score_columns(class_names)
    df = predictions[predictions["label"] >= 0].reset_index(drop=True)
    binary = len(class_names) == 2
    if binary:
        # the positive-class probability is aggregated; the negative one is its complement.
        breast = aggregate_by_breast(df, [cols[1]], how=aggregate, label_column="label")
        breast.insert(len(breast.columns) - 1, cols[0], 1.0 - breast[cols[1]])
    else:
        breast = aggregate_by_breast(df, cols, how=aggregate, label_column="label")

    def level(table: pd.DataFrame) -> dict[str, dict[str, float]]:
        scores = table[cols[1]].to_numpy() if binary else table[cols].to_numpy()
        fn = binary_metrics if binary else multiclass_metrics
        ests = bootstrap_metrics(fn, table["label"].to_numpy(), scores, table["patient_id"].astype(str).to_numpy(),
                                 n_boot=n_boot, seed=seed)
        return {k: e.to_dict() for k, e in ests.items()}

    return {
        "image": level(df),
        "breast": level(breast),
        "n_images": int(len(df)),
        "n_breasts": int(len(breast)),
        "n_patients": int(df["patient_id"].nunique()),
        "breast_table": breast,
    }
