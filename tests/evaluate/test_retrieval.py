"""Recall@K: hand-made cases and a run on the synthetic cohort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mammoclip.data.manifest import load_bundle
from mammoclip.evaluate.retrieval import recall_at_k, run_retrieval


def test_recall_at_k_hand_made() -> None:
    sims = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
    positives = [{0}, {1}, {2}]
    r = recall_at_k(sims, positives, (1, 2, 3))
    # ranks of the positives: 1, 2, 2
    assert r == {"R@1": 1 / 3, "R@2": 1.0, "R@3": 1.0}
    assert recall_at_k(sims, [{1, 2}, {0}, {2}], (1,)) == {"R@1": 0.0}


def test_retrieval_run(tiny_model, eval_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    res = run_retrieval(tiny_model, load_bundle(eval_cohort), split="train", out_dir=tmp_path)
    for direction in ("image_to_text", "text_to_image"):
        r = res["metrics"][direction]
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0
    assert res["counts"]["n_reports"] == load_bundle(eval_cohort).split("train").images["patient_id"].nunique()
    assert json.loads((tmp_path / "results.json").read_text())["kind"] == "retrieval"
