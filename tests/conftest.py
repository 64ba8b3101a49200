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


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture: ``make_cohort(n_patients=..., size=..., fmt=..., seed=..., **options)``."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return small_cohort(tmp_path / f"c{next(counter)}", **kwargs)

    return make
