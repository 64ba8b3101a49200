"""Fixtures for the evaluation tests: the tiny model and a synthetic cohort at its input size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Patients of the evaluation cohort: enough for train/val/test with both classes of `mass`.
EVAL_PATIENTS = 24


@pytest.fixture(scope="session")
def tiny_model():  # noqa: ANN201 - a MammoCLIP
    """``mammoclip-tiny`` (random weights, 128x80 input), seeded; do not modify it in a test."""
    import torch

    from mammoclip.models import create_model

    torch.manual_seed(0)
    return create_model("mammoclip-tiny").eval()


@pytest.fixture(scope="session")
def eval_cohort(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:  # noqa: ANN001
    """Manifest of a 24-patient PNG cohort at the tiny model's input size (read-only)."""
    from mammoclip.synthetic import generate_cohort

    size = tuple(tiny_model.preprocess_cfg.image_size)
    return generate_cohort(tmp_path_factory.mktemp("evalcohort"), EVAL_PATIENTS, seed=3, image_size=size,
                           progress=False)
