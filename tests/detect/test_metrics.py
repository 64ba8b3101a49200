"""Detection metrics against hand-computed cases and against pycocotools on random cases."""

from __future__ import annotations

import numpy as np
import pytest

from mammoclip.detect.metrics import (
    COCO_IOUS,
    bootstrap_class_metrics,
    box_iou,
    class_metrics,
    coco_ap,
    froc,
    match_class,
    match_image,
    voc_ap,
)

GT = np.array([[0.0, 0.0, 10.0, 10.0]])


def _voc(preds, gts):
    return [match_image(b, s, g, [0.5], "voc") for (b, s), g in zip(preds, gts)]


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b)[0], [50 / 150, 1.0, 0.0, 0.0])


def test_voc_ap_hand_case():
    # Image 1: gt A, B; detections 0.9 hits A, 0.8 misses, 0.6 hits B. Image 2 (normal): detection 0.7.
    # Sorted: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP -> recall .5 .5 .5 1, precision 1 .5 .33 .5.
    # Envelope: 1, .5, .5, .5 -> AP = .5 * 1 + .5 * .5 = .75.
    gt1 = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])
    p1 = (np.array([[0, 0, 10, 10], [100, 100, 110, 110], [50, 50, 60, 61]]), np.array([0.9, 0.8, 0.6]))
    p2 = (np.array([[0, 0, 10, 10]]), np.array([0.7]))
    m = _voc([p1, p2], [gt1, np.zeros((0, 4))])
    assert voc_ap(m) == pytest.approx(0.75)
    # The normal image's false positive is what costs: without it, AP = .5 + .5 * (2/3) = 0.8333.
    assert voc_ap(m[:1]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc_duplicate_detection_is_a_false_positive_and_never_falls_back():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 12]])  # two overlapping boxes
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    voc = match_image(pred, [0.9, 0.8], gt, [0.5], "voc")
    coco = match_image(pred, [0.9, 0.8], gt, [0.5], "coco")
    assert voc.hits.tolist() == [[1, 0]]  # VOC: the second takes the same best box -> FP
    assert coco.hits.tolist() == [[1, 1]]  # COCO: the second falls back to the free box


def test_no_ground_truth_gives_nan_and_no_detections_give_zero():
    m = _voc([(np.zeros((0, 4)), np.zeros(0))], [GT])
    assert voc_ap(m) == 0.0
    assert coco_ap([match_image(np.zeros((0, 4)), [], GT, COCO_IOUS, "coco")]) == 0.0
    assert np.isnan(voc_ap(_voc([(GT, np.array([0.5]))], [np.zeros((0, 4))])))


def test_coco_ap_hand_case():
    # One gt, one detection of IoU 0.72: a hit at thresholds .50-.70 (5 of 10), precision 1 at every
    # recall point there -> AP = 0.5.
    pred = np.array([[0.0, 0.0, 10.0, 7.2]])
    assert box_iou(pred, GT)[0, 0] == pytest.approx(0.72)
    assert coco_ap([match_image(pred, [0.9], GT, COCO_IOUS, "coco")]) == pytest.approx(0.5)
    # A higher-scoring false positive first: precision 0.5 at recall 1 -> AP = 0.5 * 0.5.
    pred2 = np.vstack([[50, 50, 60, 60], pred])
    assert coco_ap([match_image(pred2, [0.95, 0.9], GT, COCO_IOUS, "coco")]) == pytest.approx(0.25)


def test_froc_hand_case():
    # 4 images, 2 lesions. Sorted detections: .9 TP, .8 FP, .7 FP, .6 TP, .5 FP.
    # FP/image after each: 0, .25, .5, .5, .75; sensitivity .5 .5 .5 1 1.
    gts = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]), np.zeros((0, 4)), np.zeros((0, 4))]
    far = np.array([[80, 80, 90, 90]])
    preds = [(np.array([[0, 0, 10, 10]]), np.array([0.9])),
             (np.vstack([far, [[0, 0, 10, 10]]]), np.array([0.8, 0.6])),
             (far, np.array([0.7])), (far, np.array([0.5]))]
    sens = froc(_voc(preds, gts), fp_rates=(0.1, 0.25, 0.5, 1.0))
    assert sens == {0.1: 0.5, 0.25: 0.5, 0.5: 1.0, 1.0: 1.0}


def test_class_metrics_and_bootstrap_keys():
    rng = np.random.default_rng(0)
    gts = [GT + rng.uniform(0, 50) for _ in range(20)]
    preds = [(g + rng.normal(0, 1, size=4), rng.uniform(size=1)) for g in gts]
    m = match_class(preds, gts)
    point = class_metrics(m)
    assert set(point) == {"ap50", "coco_ap", "froc@0.125", "froc@0.25", "froc@0.5", "froc@1", "froc@2",
                          "froc@4", "froc@8", "froc_mean"}
    est = bootstrap_class_metrics(m, [f"p{i // 4}" for i in range(20)], n_boot=50)
    assert est["ap50"].value == point["ap50"] and est["ap50"].ci_low <= point["ap50"] <= est["ap50"].ci_high
    assert est["ap50"].n_valid == 50


def _random_case(rng: np.random.Generator, n_images: int) -> tuple[list, list]:
    gts, preds = [], []
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, size=(n_gt, 2))
        gt = np.hstack([xy, xy + rng.uniform(5, 30, size=(n_gt, 2))])
        jitter = [g + rng.normal(0, 3, size=4) for g in gt for _ in range(int(rng.integers(0, 3)))]
        xy2 = rng.uniform(0, 80, size=(int(rng.integers(0, 4)), 2))
        noise = np.hstack([xy2, xy2 + rng.uniform(5, 30, size=(len(xy2), 2))])
        boxes = np.vstack([np.array(jitter).reshape(-1, 4), noise])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        gts.append(gt)
        preds.append((boxes, rng.uniform(size=len(boxes))))
    return preds, gts


def _pycocotools_ap(preds: list, gts: list) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, ((boxes, scores), gt) in enumerate(zip(preds, gts)):
        images.append({"id": i, "width": 200, "height": 200})
        for g in gt:
            w, h = g[2] - g[0], g[3] - g[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [g[0], g[1], w, h],
                         "area": w * h, "iscrowd": 0})
        for b, s in zip(boxes, scores):
            dets.append({"image_id": i, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "mass"}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [100]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, 0]  # (T, R)
    return float(precision.mean()), float(precision[0].mean())


@pytest.mark.parametrize("seed", range(6))
def test_coco_ap_matches_pycocotools_on_random_cases(seed: int):
    pytest.importorskip("pycocotools", reason="pycocotools is in the test extra")
    preds, gts = _random_case(np.random.default_rng(seed), 12)
    ours = match_class(preds, gts)
    ref_ap, ref_ap50_101 = _pycocotools_ap(preds, gts)
    assert coco_ap(ours.coco) == pytest.approx(ref_ap, abs=1e-9)
    # COCO's 101-point AP at IoU 0.5 (first threshold) agrees too.
    assert coco_ap([type(m)(m.scores, m.hits[:1], m.n_gt) for m in ours.coco]) == pytest.approx(ref_ap50_101, abs=1e-9)
