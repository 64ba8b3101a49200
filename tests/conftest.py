"""Shared test fixtures: small synthetic cohorts.

* ``synthetic_cohort`` (session fixture): the ``manifest.csv`` Path of a 6-patient PNG cohort at
  256x160 (H, W), seed 0, generated once per test session (~1 s). Treat it as read-only: copy it
  (``shutil.copytree(path.parent, tmp_path / "c")``) before changing anything.
* ``small_cohort(tmp_path, n_patients=4, size=(256, 160), fmt="png", seed=0, **options)``: a plain
  function (``from tests.conftest import small_cohort``) that writes a fresh cohort into
  ``tmp_path / "cohort"`` and returns its manifest Path. ``options`` go to
  :func:`mammoclip.synthetic.generate_cohort` (e.g. ``prevalence={"mass": 1.0}``).
* ``make_cohort``: the same as a fixture factory bound to the test's ``tmp_path``:
  ``manifest = make_cohort(n_patients=3, fmt="dicom")``.
* ``pretrained_lite`` (session fixture, slow tests only): one run of ``configs/pretrain-lite-cpu.yaml``
  on a 300-patient cohort at 128x80 (seed 1, splits 0.85/0.15) and a 500-patient held-out cohort
  (seed 99), ~3-4 minutes on 2 cores, shared by tests/test_learning.py and
  tests/attribution/test_learning_factor.py: ``{"fit", "train" (manifest Path), "held_out" (Bundle),
  "held_out_manifest", "root"}``.

Each patient has RCC, RMLO, LCC, LMLO images, ``boxes.csv`` (one row per finding per view, with
``mask_path``), ``reports.csv`` and ``cohort.json`` beside the manifest. Load everything with
``mammoclip.data.manifest.load_bundle(manifest)``.
"""

from __future__ import annotations

import os

# The whole suite is offline: nothing may reach a model hub (the Makefile sets these too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: Size of the shared test cohort (H, W): small enough for a fast test, large enough for lesions.
TEST_IMAGE_SIZE: tuple[int, int] = (256, 160)


def small_cohort(tmp_path: Path, n_patients: int = 4, size: tuple[int, int] = TEST_IMAGE_SIZE,
                 fmt: str = "png", seed: int = 0, **options: Any) -> Path:
    """Generate a small synthetic cohort under ``tmp_path / "cohort"``; returns the manifest Path."""
    from mammoclip.synthetic import generate_cohort

    return generate_cohort(Path(tmp_path) / "cohort", n_patients, seed=seed, image_size=size, fmt=fmt,
                           progress=False, **options)


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest Path of a shared 6-patient PNG cohort (256x160, seed 0); read-only."""
    return small_cohort(tmp_path_factory.mktemp("synthetic"), n_patients=6)


@pytest.fixture(scope="session")
def pretrained_lite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CPU pre-training preset on a synthetic cohort, once per session (see the module docstring)."""
    from mammoclip.data.manifest import load_bundle
    from mammoclip.synthetic import generate_cohort
    from mammoclip.train.pretrain import run_pretraining

    root = tmp_path_factory.mktemp("learning")
    size = (128, 80)
    train = generate_cohort(root / "train", n_patients=300, seed=1, image_size=size, split_fractions=(0.85, 0.15, 0.0),
                            workers=2, progress=False)
    held_out = generate_cohort(root / "held-out", n_patients=500, seed=99, image_size=size, workers=2, progress=False)
    preset = Path(__file__).resolve().parents[1] / "configs" / "pretrain-lite-cpu.yaml"
    fit = run_pretraining(preset, [f"data.image_text=[{train}]", "eval.zero_shot=[]"], out_dir=root / "run")
    assert fit.best is not None
    return {"fit": fit, "train": train, "held_out": load_bundle(held_out), "held_out_manifest": held_out, "root": root}


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture: ``make_cohort(n_patients=..., size=..., fmt=..., seed=..., **options)``."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return small_cohort(tmp_path / f"c{next(counter)}", **kwargs)

    return make
