"""Does the detector learn? mammoclip-lite at 256x160 on the synthetic cohort, judged on held-out patients.

Two detectors are trained with the same budget (frozen encoder, same heads, data, seed and epochs):
one on the ImageNet-initialised lite tower, one on a randomly initialised tower. Both are judged on a
second cohort drawn with another seed, which training never saw, every image counted (normal ones
too). The margins are in the constants below, with the values measured when they were set.
"""

from __future__ import annotations

from typing import Any

import pytest

from mammoclip.detect import DetectorCfg, DetectTrainCfg, evaluate_detector, train_detector
from mammoclip.synthetic import generate_cohort

SIZE = (256, 160)
#: The detector and the budget: 64-channel FPN and heads, anchors 3 x stride (24 px at P3: the
#: synthetic masses are 12-31 px at 256x160).
DETECTOR = DetectorCfg(classes=["mass"], image_size=SIZE, fpn_channels=64, anchor_scale=3.0)
BUDGET = {"epochs": 4, "batch_size": 8, "lr": 1e-3, "augment": "flip", "freeze_encoder": True, "seed": 0}
#: Held-out mass AP@0.5 (all images) of the ImageNet-initialised tower must exceed this (measured 0.24) ...
AP_FLOOR = 0.12
#: ... and the random-initialised tower's (measured 0.005) by this much.
OVER_RANDOM = 0.10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def held_out_ap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("detect-learning")
    train = generate_cohort(root / "train", n_patients=60, seed=1, image_size=SIZE, split_fractions=(0.85, 0.15, 0.0),
                            prevalence={"mass": 0.6}, progress=False)
    held_out = generate_cohort(root / "held-out", n_patients=30, seed=99, image_size=SIZE,
                               split_fractions=(0.0, 0.0, 1.0), prevalence={"mass": 0.6}, progress=False)
    out: dict[str, Any] = {}
    for init in ("imagenet", "random"):
        run = train_detector(train, DETECTOR, DetectTrainCfg(checkpoint="mammoclip-lite", init=init, **BUDGET),
                             root / init, log_fn=lambda s: None)
        assert run.best is not None
        res = evaluate_detector(run.best, held_out, split="test", n_boot=0)
        out[init] = res["classes"]["mass"]
    return out


def test_pretrained_tower_detects_masses_on_held_out_patients(held_out_ap: dict[str, Any]):
    ap = {init: r["all_images"]["ap50"]["value"] for init, r in held_out_ap.items()}
    assert ap["imagenet"] > AP_FLOOR, ap
    assert ap["imagenet"] > ap["random"] + OVER_RANDOM, ap


def test_normal_images_are_in_the_held_out_evaluation(held_out_ap: dict[str, Any]):
    mass = held_out_ap["imagenet"]
    assert 0 < mass["n_positive_images"] < mass["n_images"]
    # FROC at 8 false positives per image is reached by a detector that has learnt anything
    assert mass["all_images"]["froc@8"]["value"] > held_out_ap["random"]["all_images"]["froc@8"]["value"]
