"""``mammoclip factor eval`` writes overlay grids (one column per method, Grad-CAM included) and index.html."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mammoclip.cli.main import main

SIZE = (256, 160)  # the shared synthetic cohort's


@pytest.fixture
def checkpoint_and_mapper(tmp_path: Path) -> tuple[Path, Path]:
    """mammoclip-tiny saved as a checkpoint, and an untrained mapper on its default tap, saved as a run."""
    from mammoclip.attribution import AttributeSpec, FactorMapper, save_mapper
    from mammoclip.attribution.mapper import tap_feature_map
    from mammoclip.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("mammoclip-tiny", pretrained=False, image_size=SIZE).eval()
    save_checkpoint(model, tmp_path / "ckpt")
    with torch.no_grad():
        shape = tuple(tap_feature_map(model, torch.zeros(1, 1, *SIZE), -2).shape[1:])  # (C, h, w)
    mapper = FactorMapper([AttributeSpec("mass", "mass", ("mass",))], torch.randn(1, model.embed_dim), shape, SIZE,
                          tap=-2)
    save_mapper(mapper, tmp_path / "run" / "best")
    return tmp_path / "ckpt", tmp_path / "run"


def test_cli_overlays_and_index(synthetic_cohort: Path, tmp_path: Path, checkpoint_and_mapper: tuple[Path, Path],
                                capsys: pytest.CaptureFixture) -> None:
    ckpt, run = checkpoint_and_mapper
    args = ["factor", "eval", "--checkpoint", str(ckpt), "--mapper", str(run), "--manifest", str(synthetic_cohort),
            "--split", "all", "--n-boot", "10", "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "ev"), "--overlays", "3"]) == 0
    ev = tmp_path / "ev"
    res = json.loads((ev / "results.json").read_text())
    (grid,) = res["overlays"]
    methods = ["factor", "top_channels", "breast_prior", "gradcam"]
    assert grid["attribute"] == "mass" and grid["methods"] == methods and len(grid["rows"]) == 3
    for row in grid["rows"]:
        assert list(row["tiles"]) == methods
        for rel in row["tiles"].values():
            with Image.open(ev / rel) as tile:
                assert tile.format == "PNG" and tile.mode == "RGB" and tile.size == (160, 256)
    with Image.open(ev / grid["file"]) as img:
        assert img.size == (4 * 160 + 3 * 4, 3 * 256 + 2 * 4)
    page = (ev / "index.html").read_text()
    assert "<th>gradcam</th>" in page and page.count('src="data:image/png;base64,') == 3 * 4
    assert res["beats_breast_prior"]["mass"] is not None and "mass: FActOR " in page

    capsys.readouterr()
    assert main([*args, str(tmp_path / "none"), "--overlays", "0", "--baselines", "breast_prior"]) == 0
    assert "overlays" not in json.loads((tmp_path / "none" / "results.json").read_text())
    assert not (tmp_path / "none" / "overlays").exists()
    page = (tmp_path / "none" / "index.html").read_text()
    assert "<section class=attribution>" in page and "data:image/png" not in page


def _strict(constant: str) -> None:
    raise AssertionError(f"results.json holds {constant}, which is not JSON")


def test_results_json_is_strict_without_masks(synthetic_cohort: Path, tmp_path: Path,
                                             checkpoint_and_mapper: tuple[Path, Path]) -> None:
    """A cohort with boxes but no lesion masks has no energy metric: null in results.json, never NaN."""
    import shutil

    import pandas as pd

    ckpt, run = checkpoint_and_mapper
    cohort = tmp_path / "no-masks"
    shutil.copytree(synthetic_cohort.parent, cohort)
    boxes = pd.read_csv(cohort / "boxes.csv")
    boxes.assign(mask_path="").to_csv(cohort / "boxes.csv", index=False)
    args = ["factor", "eval", "--checkpoint", str(ckpt), "--mapper", str(run), "--manifest", str(cohort / "manifest.csv"),
            "--split", "all", "--n-boot", "10", "--device", "cpu", "--baselines", "breast_prior", "--overlays", "0",
            "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text(), parse_constant=_strict)
    energy = [m for m in res["metrics"] if m["metric"] == "energy"]
    assert energy and all(m["value"] is None for m in energy)
