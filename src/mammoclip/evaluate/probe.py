"""True linear probe with data-efficiency curves and init baselines.

Fixes to the original's protocol (docs/original.md §6.2, docs/original.md §9):

* the encoder is **frozen for real**: features are extracted once in ``eval()`` mode under
  ``no_grad`` (no BatchNorm update, no dropout) and cached; the head is a scikit-learn
  logistic regression on standardised features;
* label fractions are drawn by **patient**, stratified on the label, with fixed seeds;
* the regularisation ``C`` is chosen on a validation set **carved from the training patients**;
  the test split is only scored, once, with the selected head; patient overlap between train and
  test is an error;
* rare positives are handled with class weighting (``class_weight="balanced"``);
* baselines: the same image tower from the checkpoint (``pretrained``), randomly initialised
  (``random``) or ImageNet-initialised (``imagenet``), with one flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.data.manifest import Bundle
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate import distributed as D
from mammoclip.evaluate.features import cached_features, check_image_size
from mammoclip.evaluate.metrics import (
    DEFAULT_BOOTSTRAP,
    binary_metrics,
    evaluate_predictions,
    multiclass_metrics,
    score_columns,
)
from mammoclip.evaluate.splits import DEFAULT_VAL_FRACTION, assert_disjoint, carve_validation, sample_patients
from mammoclip.evaluate.tasks import TaskSpec, get_task, task_labels

#: Inverse regularisation strengths tried on the validation set (log grid, as in CLIP's probe).
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Image-tower initialisations a probe can compare.
INITS: tuple[str, ...] = ("pretrained", "random", "imagenet")
#: Iteration cap of the logistic regression solver.
MAX_ITER: int = 2000
#: Torch seed of the ``random``/``imagenet`` baselines' fresh weights: fixed, so that every process of a
#: torchrun job builds the same baseline, and not 0, the seed a randomly initialised checkpoint was
#: most likely built with (which would make the "random" baseline that very checkpoint).
BASELINE_SEED: int = 1


@dataclass
class ProbeData:
    """Features and labels of one part (train, val or test) with the ids they come from."""

    X: np.ndarray
    y: np.ndarray
    image_ids: np.ndarray
    patient_ids: np.ndarray


def _head(C: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER,
                                                              random_state=seed))


def predict_proba(head: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, n_classes)`` probabilities, with zero columns for classes absent from training."""
    p = head.predict_proba(X)
    out = np.zeros((len(X), n_classes))
    out[:, head.classes_.astype(int)] = p
    return out


def selection_score(y: np.ndarray, probs: np.ndarray, binary: bool) -> float:
    """Validation criterion: AUC (binary) or balanced accuracy (multi-class); NaN when undefined."""
    if binary:
        return binary_metrics(y, probs[:, 1])["auc"]
    return multiclass_metrics(y, probs)["balanced_accuracy"]


def select_and_fit(train: ProbeData, val: ProbeData, n_classes: int, *, Cs: Sequence[float] = DEFAULT_CS,
                   seed: int = 0) -> tuple[Any, float, float]:
    """Pick ``C`` on ``val``, return the head fitted on ``train`` with it.

    This is the only place the probe does model selection; it sees the training and validation
    parts and nothing else (tests spy on it to prove the test split never reaches it).

    Returns:
        ``(head, C, validation score)``; with an undefined validation score (e.g. one class in
        val) the middle of the grid is used.
    """
    if len(np.unique(train.y)) < 2:
        raise DataError("the sampled training patients have a single class; use a larger label fraction")
    best: tuple[float, float, Any] | None = None
    for C in Cs:
        head = _head(C, seed).fit(train.X, train.y)
        score = selection_score(val.y, predict_proba(head, val.X, n_classes), n_classes == 2) if len(val.y) else float("nan")
        if np.isfinite(score) and (best is None or score > best[0]):
            best = (score, C, head)
    if best is None:
        C = list(Cs)[len(Cs) // 2]
        return _head(C, seed).fit(train.X, train.y), C, float("nan")
    return best[2], best[1], best[0]


def _part(X: np.ndarray, y: np.ndarray, images: pd.DataFrame, mask: np.ndarray) -> ProbeData:
    return ProbeData(X[mask], y[mask], images["image_id"].astype(str).to_numpy()[mask],
                     images["patient_id"].astype(str).to_numpy()[mask])


def probe_once(
    features: np.ndarray,
    labels: np.ndarray,
    images: pd.DataFrame,
    spec: TaskSpec,
    *,
    fraction: float,
    seed: int,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> tuple[dict[str, Any], np.ndarray]:
    """One probe fit: sample a patient fraction of the training pool, carve val, select C, score test.

    Args:
        features: ``(N, F)`` frozen features of every row of ``images``.
        labels: ``(N,)`` label indices (-1 = unlabelled, dropped).
        images: Manifest rows with ``split``; ``train`` and ``val`` rows form the training pool,
            ``test`` rows are scored.

    Returns:
        ``(row of the data-efficiency table, (N_test, K) test probabilities)``.
    """
    k = len(spec.classes)
    keep = labels >= 0
    X, y, df = features[keep], labels[keep], images[keep].reset_index(drop=True)
    is_test = (df["split"] == "test").to_numpy()
    pool_df, test_df = df[~is_test], df[is_test]
    assert_disjoint({"train": pool_df, "test": test_df})
    if len(test_df) == 0:
        raise DataError("manifest has no labelled test rows to score the probe on")
    pool_idx = np.flatnonzero(~is_test)
    sampled = pool_idx[sample_patients(pool_df.reset_index(drop=True), y[pool_idx], fraction, seed)]
    val_local = carve_validation(df.iloc[sampled].reset_index(drop=True), y[sampled], val_fraction, seed)
    train_mask = np.zeros(len(df), bool)
    val_mask = np.zeros(len(df), bool)
    train_mask[sampled[~val_local]] = True
    val_mask[sampled[val_local]] = True
    assert_disjoint({"train": df[train_mask], "val": df[val_mask], "test": test_df})
    train, val, test = _part(X, y, df, train_mask), _part(X, y, df, val_mask), _part(X, y, df, is_test)
    head, C, val_score = select_and_fit(train, val, k, Cs=Cs, seed=seed)
    probs = predict_proba(head, test.X, k)
    test_metrics = binary_metrics(test.y, probs[:, 1]) if spec.binary else multiclass_metrics(test.y, probs)
    row = {"fraction": fraction, "seed": seed, "C": C, "val_score": val_score,
           "n_train_patients": int(pd.unique(train.patient_ids).size), "n_train_images": int(len(train.y)),
           "n_val_images": int(len(val.y)), **{f"test_{m}": v for m, v in test_metrics.items()}}
    return row, probs


def test_predictions(images: pd.DataFrame, labels: np.ndarray, spec: TaskSpec, probs: np.ndarray, *,
                     init: str, fraction: float, seed: int) -> pd.DataFrame:
    """One fit's test-split predictions: ids, label, class scores, tagged with (init, fraction, seed)."""
    test = (images["split"] == "test").to_numpy()
    pf = images.loc[test, ["image_id", "patient_id", "laterality", "view"]].copy()
    pf["label"] = labels[test]
    pf[score_columns(spec.class_names)] = probs
    pf.insert(0, "seed", seed)
    pf.insert(0, "fraction", fraction)
    pf.insert(0, "init", init)
    return pf


def sweep_inputs(bundle: Bundle, task: str | TaskSpec, inits: Sequence[str]) -> tuple[TaskSpec, Bundle, np.ndarray]:
    """What a probe or fine-tune sweep starts from: the task spec, the manifest rows that carry its
    label, and their label indices ``(N,)``. Unknown initialisations are refused here, once for both."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    unknown = sorted(set(inits) - set(INITS))
    if unknown:
        raise ConfigError(f"unknown --init {unknown}; choose from {INITS}")
    images = bundle.images.reset_index(drop=True)
    labels = task_labels(images, spec)
    keep = labels >= 0
    return spec, Bundle(images[keep].reset_index(drop=True), bundle.boxes, bundle.reports, bundle.root), labels[keep]


def run_probe(
    model_factory: Callable[[str], Any],
    bundle: Bundle,
    task: str | TaskSpec,
    *,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    inits: Sequence[str] = ("pretrained",),
    out_dir: str | Path | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    feature_kind: str = "pooled",
    cache_dir: str | Path | None = None,
    aggregate: str = "max",
    batch_size: int = 16,
    num_workers: int = 0,
    n_boot: int = DEFAULT_BOOTSTRAP,
    allow_resize: bool = False,
    model_name: str = "",
    progress: bool | None = False,
) -> dict[str, Any]:
    """Linear probes for every (init, fraction, seed); writes the run directory when ``out_dir`` is given.

    Args:
        model_factory: ``init -> model`` (see :func:`init_factory`); called once per init.
        bundle: Manifest with ``train``/``val``/``test`` splits and the task's labels.
        task: Task name or spec.
        fractions: Label fractions of the training patients.
        seeds: Seeds (fraction sampling, validation carving, solver).
        inits: Image-tower initialisations to compare.
        out_dir: Run directory: ``results.json``, ``data_efficiency.csv``, ``predictions.csv``,
            ``data_efficiency.png``, ROC/confusion PNGs per init, ``index.html``.
        Cs: Regularisation grid searched on validation.
        feature_kind: ``pooled`` (image-tower features) or ``projected`` (joint embedding).
        cache_dir: Feature cache (default ``out_dir/cache``).
        n_boot: Bootstrap replicates of the CIs, computed for each init's largest fraction, first seed.

    Returns:
        The results dict (as written to ``results.json``), the same on every rank under torchrun, where
        the feature extraction is shared out and rank 0 alone fits the heads and writes the folder.
    """
    spec, sub, labels = sweep_inputs(bundle, task, inits)
    out = Path(out_dir) if out_dir is not None else None
    if cache_dir is None and out is not None:
        cache_dir = out / "cache"
    features: dict[str, np.ndarray] = {}
    for init in inits:  # every rank (torchrun) extracts its share of the rows; every rank gets them all
        model = model_factory(init)
        check_image_size(model, sub, allow_resize=allow_resize)
        features[init] = cached_features(model, sub, cache_dir, kinds=(feature_kind,), batch_size=batch_size,
                                         num_workers=num_workers, progress=progress)[feature_kind]
        del model
    # the fits, metrics and files once, on rank 0; every rank returns its results
    return D.on_primary(lambda: _fit_probes(features, labels, sub, spec, out, fractions=fractions, seeds=seeds,
                                            Cs=Cs, val_fraction=val_fraction, feature_kind=feature_kind,
                                            aggregate=aggregate, n_boot=n_boot, model_name=model_name))


def _fit_probes(features: dict[str, np.ndarray], labels: np.ndarray, sub: Bundle, spec: TaskSpec,
                out: Path | None, *, fractions: Sequence[float], seeds: Sequence[int], Cs: Sequence[float],
                val_fraction: float, feature_kind: str, aggregate: str, n_boot: int,
                model_name: str) -> dict[str, Any]:
    """The sweep of :func:`run_probe` on its frozen features (``init -> (N, F)``), and its run folder."""
    inits = list(features)
    rows, pred_frames, metrics = [], [], {}
    top = max(fractions)
    for init, feats in features.items():
        for fraction in fractions:
            for seed in seeds:
                row, probs = probe_once(feats, labels, sub.images, spec, fraction=fraction, seed=seed, Cs=Cs,
                                        val_fraction=val_fraction)
                rows.append({"init": init, **row})
                pf = test_predictions(sub.images, labels, spec, probs, init=init, fraction=fraction, seed=seed)
                pred_frames.append(pf)
                if fraction == top and seed == seeds[0]:
                    scored = evaluate_predictions(pf, spec.class_names, aggregate=aggregate, n_boot=n_boot)
                    metrics[f"{init} image"] = scored["image"]
                    metrics[f"{init} breast"] = scored["breast"]
    table = pd.DataFrame(rows)
    predictions = pd.concat(pred_frames, ignore_index=True)
    headline = "test_auc" if spec.binary else "test_accuracy"
    means = table.groupby(["init", "fraction"])[headline].mean()
    results: dict[str, Any] = {
        "kind": "probe",
        "task": spec.name,
        "model": model_name,
        "feature_kind": feature_kind,
        "aggregate": aggregate,
        "protocol": {"fractions": list(fractions), "seeds": list(seeds), "inits": list(inits), "Cs": list(Cs),
                     "val_fraction": val_fraction, "selection": "val AUC" if spec.binary else "val balanced accuracy",
                     "head": "StandardScaler + LogisticRegression(class_weight='balanced')"},
        "metrics": metrics,
        "data_efficiency": table.to_dict(orient="records"),
        "summary": {f"{init}@{fr:g} {headline}": float(v) for (init, fr), v in means.items()},
    }
    if out is not None:
        write_classifier_run(out, results, table, predictions, spec, headline, label="linear probe")
    return results


def write_classifier_run(out: Path, results: dict[str, Any], table: pd.DataFrame, predictions: pd.DataFrame,
                         spec: TaskSpec, headline: str, *, label: str) -> None:
    """Write a probe/fine-tune run directory: tables, CSVs, data-efficiency + ROC/confusion PNGs, HTML.

    Args:
        table: One row per (init, fraction, seed) with the test metrics.
        predictions: Test probabilities of every fit.
        headline: Column of ``table`` plotted against the label fraction.
        label: What was trained ("linear probe", "fine-tune"), for titles.
    """
    from mammoclip.evaluate.report import (
        PREDICTIONS_FILE,
        plot_confusion,
        plot_data_efficiency,
        plot_roc,
        write_html_report,
        write_results,
    )

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "data_efficiency.csv", index=False)
    predictions.to_csv(out / PREDICTIONS_FILE, index=False)
    plot_data_efficiency(table, headline, out / "data_efficiency.png", title=f"{label} {spec.name}")
    top = predictions["fraction"].max()
    first = predictions[(predictions["fraction"] == top) & (predictions["seed"] == predictions["seed"].iloc[0])]
    cols = score_columns(spec.class_names)
    if spec.binary:
        curves = {init: (p["label"].to_numpy(), p[cols[1]].to_numpy(), p["patient_id"].to_numpy())
                  for init, p in first.groupby("init")}
        plot_roc(curves, out / "roc.png", title=f"{label} {spec.name} @ {top:g} (per image)")
    else:
        for init, p in first.groupby("init"):
            plot_confusion(p["label"].to_numpy(), p[cols].to_numpy().argmax(1), spec.class_names,
                           out / f"confusion_{init}.png", title=f"{init} @ {top:g}")
    write_results(out, results)
    summary = table.groupby(["init", "fraction"]).agg(
        **{f"{headline}_mean": (headline, "mean"), f"{headline}_sd": (headline, "std"), "n_seeds": ("seed", "size")}
    ).reset_index()
    write_html_report(out, results, tables={"Data efficiency (test, mean and sd over seeds)": summary})


def init_factory(checkpoint: str | Path) -> Callable[[str], Any]:
    """``init -> model`` for a checkpoint dir or registry name.

    * ``pretrained``: the checkpoint (or registry model with its pretrained weights);
    * ``random``: the same architecture, every weight randomly initialised;
    * ``imagenet``: the same architecture with its image tower's ImageNet weights (the registry's
      ``pretrained`` weights of the base model the checkpoint was built from).
    """
    from mammoclip.evaluate.features import resolve_model

    def factory(init: str) -> Any:
        from mammoclip.models import create_model

        base: Any = resolve_model(checkpoint)
        if init == "pretrained":
            return base
        # seeded: every process of a torchrun job must build the same random weights
        return D.seeded(lambda: create_model(base.cfg, pretrained=init == "imagenet"), seed=BASELINE_SEED)

    return factory
