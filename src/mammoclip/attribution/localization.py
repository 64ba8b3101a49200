"""Weak-localization metrics of heatmaps against truth boxes and masks, with patient-level bootstrap CIs.

Per image and attribute (docs/attribution.md, "Metrics"):

* ``iou``: IoU of the *top region* (the connected component of the 95th-percentile threshold that
  holds the heatmap's maximum) with the best-matching truth box of the attribute;
  ``hit@0.25`` / ``hit@0.5``: ``iou >= 0.25`` / ``>= 0.5`` (the paper's weak-localization numbers);
* ``pointing``: the heatmap's maximum (centre of the arg-max pixel) lies inside a truth box;
* ``energy``: share of the heatmap's mass inside the union of the lesion masks (NaN without masks).

Only images that show the attribute and have at least one truth box for it are scored. The mean of
each metric over those images comes with a percentile bootstrap interval that resamples patients
(:func:`mammoclip.evaluate.metrics.bootstrap_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.attribution.attributes import AttributeSpec
from mammoclip.attribution.heatmap import REGION_PERCENTILE, heat_regions
from mammoclip.data.manifest import TRANSFORM_COLUMNS, Bundle
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate.metrics import DEFAULT_BOOTSTRAP, bootstrap_metrics
from mammoclip.imaging.breast import TransformRecord
from mammoclip.progress import progress_bar

#: IoU thresholds of the hit rates (the paper reports both).
IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5)
#: Metric columns of the per-image table, in report order.
METRICS: tuple[str, ...] = ("hit@0.25", "hit@0.5", "pointing", "energy", "iou")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x ``(M, 4)`` boxes (xmin, ymin, xmax, ymax; continuous edges) -> ``(N, M)`` IoU."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih  # (N, M)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def localize_one(heat: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                 percentile: float = REGION_PERCENTILE) -> dict[str, float]:
    """Every metric of one heatmap ``(H, W)`` against ``(K, 4)`` truth boxes and an optional lesion mask."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    if len(truth) == 0:
        raise ValueError("localize_one needs at least one truth box")
    regions = heat_regions(heat, percentile)
    iou = float(box_iou(np.array([[regions[0][k] for k in ("xmin", "ymin", "xmax", "ymax")]]), truth).max()) \
        if regions else 0.0
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x, y = px + 0.5, py + 0.5
    inside = (truth[:, 0] <= x) & (x < truth[:, 2]) & (truth[:, 1] <= y) & (y < truth[:, 3])
    out = {f"hit@{t:g}": float(iou >= t) for t in IOU_THRESHOLDS}
    total = float(heat.sum())
    energy = float(heat[mask].sum() / total) if mask is not None and total > 0 else float("nan")
    return {**out, "pointing": float(inside.any()), "energy": energy, "iou": iou}


def _matches(label: str, column: str) -> bool:
    """Does a truth-box label belong to the attribute whose label column is ``column``?"""
    from mammoclip.text.prompts import canonical_finding

    if label.strip().lower() == column.strip().lower():
        return True
    try:
        return canonical_finding(label) == canonical_finding(column)
    except ConfigError:
        return False


def _record(row: Mapping[str, Any]) -> TransformRecord | None:
    if all(c in row and pd.notna(row[c]) for c in TRANSFORM_COLUMNS):
        return TransformRecord.from_row(row)
    return None


def truth_for(bundle: Bundle, row: Mapping[str, Any], spec: AttributeSpec,
              shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Truth boxes ``(K, 4)`` and the union of their masks ``(H, W)`` (None if any is missing) on the processed grid.

    Boxes in ``original`` space go through the row's transform record; without one the grids are the
    same (synthetic PNG cohorts). Masks are read from ``mask_path`` on the box's grid.
    """
    from mammoclip.imaging.imageio import read_image

    boxes = bundle.boxes[bundle.boxes["image_id"].astype(str) == str(row["image_id"])]
    boxes = boxes[[_matches(str(lab), spec.label_column) for lab in boxes["label"]]]
    if boxes.empty:
        return np.zeros((0, 4)), None
    rec = _record(row)
    coords = np.array(boxes[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=np.float64))  # a writable copy
    original = (boxes["space"].astype(str) == "original").to_numpy()
    if original.any() and rec is not None:
        coords[original] = rec.map_boxes(coords[original])
    mask: np.ndarray | None = np.zeros(shape, dtype=bool)
    paths = boxes["mask_path"] if "mask_path" in boxes.columns else pd.Series([None] * len(boxes))
    for rel, space in zip(paths, boxes["space"].astype(str)):
        if mask is None or not isinstance(rel, str) or not rel:
            mask = None
            continue
        m = read_image(bundle.abspath(rel)) > 0
        if space == "original" and rec is not None:
            m = rec.apply(m, interpolation="nearest")
        if m.shape != shape:
            raise DataError(f"{bundle.abspath(rel)}: mask is {m.shape} but its image is {shape}")
        mask |= m
    return coords, mask


def scored_rows(bundle: Bundle, spec: AttributeSpec) -> np.ndarray:
    """Row indices of the images that show ``spec`` and have at least one truth box for it."""
    images = bundle.images
    if spec.label_column not in images.columns:
        raise DataError(f"manifest has no column {spec.label_column!r}, which attribute {spec.name!r} needs")
    positive = images[spec.label_column].to_numpy(dtype=float) == 1
    labels = bundle.boxes[[_matches(str(lab), spec.label_column) for lab in bundle.boxes["label"]]]
    boxed = images["image_id"].astype(str).isin(set(labels["image_id"].astype(str))).to_numpy()
    return np.flatnonzero(positive & boxed)


def summarize(table: pd.DataFrame, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Per (method, attribute): the mean of every metric with its patient-bootstrap 95% CI.

    Args:
        table: One row per (method, attribute, image) with ``patient_id`` and :data:`METRICS` columns.

    Returns:
        Columns ``method, attribute, metric, value, ci_low, ci_high, n_images, n_patients``.
    """
    rows = []
    for (method, attr), part in table.groupby(["method", "attribute"], sort=False):
        values = part[list(METRICS)].to_numpy(dtype=np.float64)  # (N, M)

        def means(_: np.ndarray, s: np.ndarray) -> dict[str, float]:
            with np.errstate(invalid="ignore"):
                return {m: float(np.nanmean(s[:, i])) if np.isfinite(s[:, i]).any() else float("nan")
                        for i, m in enumerate(METRICS)}

        est = bootstrap_metrics(means, np.zeros(len(part)), values, part["patient_id"].to_numpy(), n_boot=n_boot,
                                seed=seed)
        for m in METRICS:
            rows.append({"method": method, "attribute": attr, "metric": m, "value": est[m].value,
                         "ci_low": est[m].ci_low, "ci_high": est[m].ci_high, "n_images": len(part),
                         "n_patients": int(part["patient_id"].nunique())})
    return pd.DataFrame(rows)


def localization_table(
    explainers: Mapping[str, Any], bundle: Bundle, attributes: Sequence[AttributeSpec], *, batch_size: int = 16,
    num_workers: int = 0, percentile: float = REGION_PERCENTILE, progress: bool | None = False,
) -> pd.DataFrame:
    """Score every method on every attribute's positive, boxed images of ``bundle``.

    Args:
        explainers: ``method name -> Explainer`` (all on the same model).

    Returns:
        One row per (method, attribute, image): ids, ``score`` and :data:`METRICS`.
    """

    from mammoclip.evaluate.features import check_image_size, image_batches

    model = next(iter(explainers.values())).model
    check_image_size(model, bundle)
    rows: list[dict[str, Any]] = []
    for spec in attributes:
        idx = scored_rows(bundle, spec)
        if len(idx) == 0:
            continue
        sub = Bundle(bundle.images.iloc[idx].reset_index(drop=True), bundle.boxes, bundle.reports, bundle.root)
        bar = progress_bar(len(idx), f"localize {spec.name}", "img", enabled=progress)
        for ids, images in image_batches(model, sub, batch_size=batch_size, num_workers=num_workers):
            outs = {name: ex(images) for name, ex in explainers.items()}
            for j, i in enumerate(ids.tolist()):
                row = sub.images.iloc[i]
                shape = (int(images.shape[-2]), int(images.shape[-1]))
                truth, mask = truth_for(sub, row, spec, shape)
                for name, (heats, scores) in outs.items():
                    a_idx = explainers[name].ctx.attributes.index(spec.name)
                    m = localize_one(heats[j, a_idx], truth, mask, percentile=percentile)
                    rows.append({"method": name, "attribute": spec.name, "image_id": str(row["image_id"]),
                                 "patient_id": str(row["patient_id"]), "score": float(scores[j, a_idx]), **m})
            bar.update(len(ids))
        bar.close()
    return pd.DataFrame(rows)
