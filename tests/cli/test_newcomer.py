"""A newcomer's path, as README.md documents it: a flat folder of DICOMs plus a labels CSV to zero-shot
results with n and 95% CIs in three commands (manifest build, preprocess, zeroshot)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mammoclip.cli.main import main


def flat_dicom_folder(root: Path, n_patients: int = 8, seed: int = 1) -> tuple[Path, Path]:
    """A flat folder of opaque-named synthetic DICOMs and a ``labels.csv`` (file, mass); returns both."""
    from mammoclip.synthetic import generate_cohort

    manifest = generate_cohort(root / "synthetic", n_patients, seed=seed, image_size=(128, 80), fmt="dicom",
                               progress=False, prevalence={"mass": 0.5})
    images = pd.read_csv(manifest)
    flat = root / "my-dicoms"
    flat.mkdir()
    rows = []
    for i, row in enumerate(images.itertuples()):
        name = f"IMG{i:04d}.dcm"
        shutil.copy(manifest.parent / str(row.path), flat / name)
        rows.append({"file": name, "mass": int(row.mass)})
    labels = root / "my-labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return flat, labels


@pytest.mark.slow
def test_flat_dicoms_and_labels_to_zeroshot_in_three_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    flat, labels = flat_dicom_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["manifest", "build", str(flat), "--labels", str(labels), "--out", "data/mine"]) == 0
    assert main(["preprocess", "data/mine", "--out", "data/mine-png", "--size", "128x80", "--workers", "1"]) == 0
    capsys.readouterr()
    zeroshot = ["zeroshot", "--checkpoint", "mammoclip-tiny", "--manifest", "data/mine-png", "--task", "mass",
                "--workers", "0", "--n-boot", "100"]
    assert main(zeroshot) == 0
    out = capsys.readouterr().out
    assert "drawn by patient hash" in out and "use --split all" in out, out
    assert main([*zeroshot, "--split", "all"]) == 0
    out = capsys.readouterr().out
    truth = pd.read_csv(labels)
    assert (f"zeroshot mass on every split: {len(truth)} images, 8 patients, 16 breasts, "
            f"{int(truth['mass'].sum())} positive images") in out, out
    assert re.search(r"image +auc \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}, patient bootstrap\)", out), out
    assert re.search(r"results -> runs/zeroshot-\d{8}-\d{6}(-\d+)?$", out.strip()), out
