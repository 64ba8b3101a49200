"""Detection metrics: VOC AP@0.5, COCO AP@[.5:.95], FROC, and patient-level bootstrap intervals.

Matching happens **per image**, so it is done once (:func:`match_image`) and every metric over any
multiset of images (the whole test split, a bootstrap replicate, the positive images only) is a
concatenation of per-image match arrays, sorted by score. That keeps a 1000-replicate bootstrap cheap.

Two matching rules, because the two AP conventions differ:

* ``voc`` (the original's ``csv_eval``, docs/original.md §6.3): detections in score order; each takes
  the ground-truth box it overlaps most; a hit when that IoU >= the threshold and that box is not yet
  taken, otherwise a false positive (a detection never falls back to its second-best box).
* ``coco`` (pycocotools ``COCOeval.evaluateImg``): detections in score order; each takes the *untaken*
  ground-truth box with the highest IoU >= the threshold; at most ``max_dets`` detections per image.

AP: ``voc`` integrates the precision envelope over every recall step (all-point interpolation, VOC
2010+); ``coco`` averages the envelope sampled at 101 recall points and over IoU 0.50:0.05:0.95.
Both are checked against hand-computed cases and pycocotools in ``tests/detect/test_metrics.py``.

FROC: sensitivity (share of ground-truth lesions hit) against the mean number of false positives per
image, **counting every image** of the set, normal ones included; reported at
:data:`FROC_FP_RATES` and as their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mammoclip.evaluate.metrics import Estimate, group_bootstrap_indices

#: IoU thresholds of COCO AP (0.50:0.05:0.95).
COCO_IOUS: tuple[float, ...] = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))
#: Recall points at which COCO samples the precision envelope.
COCO_RECALLS: np.ndarray = np.linspace(0.0, 1.0, 101)
#: Detections per image COCO considers (its ``maxDets`` for AP).
COCO_MAX_DETS: int = 100
#: False positives per image at which FROC sensitivity is reported (the usual mammography CAD points).
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``(N, 4)`` with every box of ``b`` ``(M, 4)`` (xmin, ymin, xmax, ymax).

    Continuous coordinates, no "+1" (the manifest's convention and pycocotools').
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)  # (N,)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)  # (M,)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class ImageMatch:
    """One image's detections of one class, matched at one or more IoU thresholds.

    Attributes:
        scores: ``(D,)`` detection scores, in descending order.
        hits: ``(T, D)`` 1 where the detection is a true positive at threshold ``t``.
        n_gt: Ground-truth boxes of the class in the image.
    """

    scores: np.ndarray
    hits: np.ndarray
    n_gt: int


def match_image(pred_boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
                thresholds: Sequence[float], rule: str = "voc", max_dets: int | None = None) -> ImageMatch:
    """Match one image's detections to its ground truth (see the module docstring for the rules).

    Args:
        pred_boxes: ``(D, 4)`` detections.
        scores: ``(D,)`` their scores.
        gt_boxes: ``(G, 4)`` ground truth.
        thresholds: IoU thresholds; one row of ``hits`` each.
        rule: ``voc`` or ``coco``.
        max_dets: Keep only the top-scoring detections (COCO: 100).
    """
    if rule not in ("voc", "coco"):
        raise ValueError(f"unknown matching rule {rule!r}; known: ['coco', 'voc']")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    if max_dets is not None:
        order = order[:max_dets]
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)[order]
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    hits = np.zeros((len(thresholds), len(order)), dtype=np.int8)
    if len(gt) and len(order):
        ious = box_iou(pred, gt)  # (D, G)
        for t, thr in enumerate(thresholds):
            taken = np.zeros(len(gt), dtype=bool)
            for d in range(len(order)):
                if rule == "voc":
                    g = int(np.argmax(ious[d]))
                    if ious[d, g] >= thr and not taken[g]:
                        taken[g] = True
                        hits[t, d] = 1
                else:
                    free = np.where(taken, -1.0, ious[d])
                    g = int(np.argmax(free))
                    if free[g] >= thr:
                        taken[g] = True
                        hits[t, d] = 1
    return ImageMatch(scores[order], hits, len(gt))


def _curve(matches: Sequence[ImageMatch], t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scores (descending), cumulative TP and FP counts over all images, and the number of GT boxes."""
    n_gt = sum(m.n_gt for m in matches)
    if not matches:
        return np.zeros(0), np.zeros(0), np.zeros(0), 0
    scores = np.concatenate([m.scores for m in matches])
    hits = np.concatenate([m.hits[t] for m in matches]).astype(np.float64)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(1.0 - hits[order])
    return scores[order], tp, fp, n_gt


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing in recall (the max precision at any higher recall)."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def voc_ap(matches: Sequence[ImageMatch], t: int = 0) -> float:
    """All-point interpolated AP over the images (NaN without ground truth)."""
    _, tp, fp, n_gt = _curve(matches, t)
    if n_gt == 0:
        return float("nan")
    recall = np.concatenate([[0.0], tp / n_gt, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    precision = _envelope(precision)
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def coco_ap(matches: Sequence[ImageMatch]) -> float:
    """COCO AP: 101-point AP averaged over the thresholds the matches were made at (NaN without GT)."""
    if not matches or sum(m.n_gt for m in matches) == 0:
        return float("nan")
    per_threshold = []
    for t in range(matches[0].hits.shape[0]):
        _, tp, fp, n_gt = _curve(matches, t)
        if len(tp) == 0:  # no detections: precision 0 at every recall
            per_threshold.append(0.0)
            continue
        recall = tp / n_gt
        precision = _envelope(tp / np.maximum(tp + fp, np.finfo(np.float64).eps))
        idx = np.searchsorted(recall, COCO_RECALLS, side="left")
        sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
        per_threshold.append(float(sampled.mean()))
    return float(np.mean(per_threshold))


def froc(matches: Sequence[ImageMatch], fp_rates: Sequence[float] = FROC_FP_RATES, t: int = 0
         ) -> dict[float, float]:
    """Sensitivity at each mean-false-positives-per-image rate (NaN without ground truth).

    The sensitivity at rate ``f`` is the highest reached by any score threshold whose false positives
    per image do not exceed ``f`` (0 when even the top detection exceeds it).
    """
    n_images = len(matches)
    _, tp, fp, n_gt = _curve(matches, t)
    if n_gt == 0 or n_images == 0:
        return {float(f): float("nan") for f in fp_rates}
    sens = np.concatenate([[0.0], tp / n_gt])
    fppi = np.concatenate([[0.0], fp / n_images])
    return {float(f): float(sens[fppi <= f].max()) for f in fp_rates}


def froc_curve(matches: Sequence[ImageMatch], t: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The whole FROC curve: (false positives per image, sensitivity) at every score threshold."""
    _, tp, fp, n_gt = _curve(matches, t)
    n = max(len(matches), 1)
    return np.concatenate([[0.0], fp / n]), np.concatenate([[0.0], tp / max(n_gt, 1)])


def pr_curve(matches: Sequence[ImageMatch], t: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every score threshold, at matching threshold index ``t``."""
    _, tp, fp, n_gt = _curve(matches, t)
    return tp / max(n_gt, 1), tp / np.maximum(tp + fp, 1e-12)


@dataclass
class ClassMatches:
    """Per-image matches of one class under the three metrics' rules, aligned with an image list."""

    voc: list[ImageMatch]
    coco: list[ImageMatch]

    def subset(self, idx: Sequence[int] | np.ndarray) -> ClassMatches:
        return ClassMatches([self.voc[i] for i in idx], [self.coco[i] for i in idx])


def match_class(preds: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray],
                iou: float = 0.5) -> ClassMatches:
    """Match every image once for VOC (at ``iou``) and COCO (at :data:`COCO_IOUS`).

    Args:
        preds: Per image ``(boxes (D, 4), scores (D,))`` of one class.
        gts: Per image ``(G, 4)`` ground truth of that class.
        iou: The VOC (and FROC) IoU threshold.
    """
    voc = [match_image(b, s, g, [iou], "voc") for (b, s), g in zip(preds, gts, strict=True)]
    coco = [match_image(b, s, g, COCO_IOUS, "coco", COCO_MAX_DETS) for (b, s), g in zip(preds, gts, strict=True)]
    return ClassMatches(voc, coco)


def class_metrics(m: ClassMatches, fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, float]:
    """``ap50``, ``coco_ap``, ``froc@F`` for each rate and ``froc_mean`` of one class's matches."""
    out = {"ap50": voc_ap(m.voc), "coco_ap": coco_ap(m.coco)}
    sens = froc(m.voc, fp_rates)
    out.update({f"froc@{f:g}": v for f, v in sens.items()})
    out["froc_mean"] = float(np.mean(list(sens.values())))
    return out


def bootstrap_class_metrics(m: ClassMatches, groups: Sequence[str] | np.ndarray, n_boot: int, seed: int = 0,
                            alpha: float = 0.05) -> dict[str, Estimate]:
    """:func:`class_metrics` with patient-level bootstrap percentile intervals.

    Whole patients are resampled (:func:`mammoclip.evaluate.metrics.group_bootstrap_indices`); a
    patient drawn twice contributes all its images twice, false positives included.
    """
    point = class_metrics(m)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for idx in group_bootstrap_indices(np.asarray(groups), n_boot, seed) if n_boot > 0 else []:
        for k, v in class_metrics(m.subset(idx)).items():
            if np.isfinite(v):
                samples[k].append(v)
    out = {}
    for k, v in point.items():
        vals = np.asarray(samples[k])
        lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if len(vals) else (float("nan"), float("nan"))
        out[k] = Estimate(float(v), float(lo), float(hi), len(vals))
    return out
