"""Linear probe with mammoclip-tiny: really frozen, cached features, data-efficiency outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle
from mammoclip.evaluate import features as feat_mod
from mammoclip.evaluate.features import extract_features
from mammoclip.evaluate.probe import run_probe


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_probe_is_frozen_and_writes_data_efficiency(tiny_model, eval_cohort: Path, tmp_path: Path,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(eval_cohort)
    model = tiny_model
    model.train()  # the probe must switch to eval itself (and restore the mode after)
    before = _snapshot(model)
    bn = [k for k in before if k.endswith("running_mean")]
    assert bn, "the tiny image tower has BatchNorm layers"
    run_probe(lambda init: model, bundle, "mass", fractions=(0.5, 1.0), seeds=(0, 1), inits=("pretrained",),
                    out_dir=tmp_path, n_boot=20)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights or BN statistics changed"
    assert model.training, "the caller's mode is restored"
    model.eval()

    table = pd.read_csv(tmp_path / "data_efficiency.csv")
    assert len(table) == 4 and set(table["fraction"]) == {0.5, 1.0}
    assert (table.loc[table["fraction"] == 0.5, "n_train_patients"] < table.loc[table["fraction"] == 1.0, "n_train_patients"].min()).all()
    with Image.open(tmp_path / "data_efficiency.png") as im:
        assert im.format == "PNG" and im.size[0] > 200
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "pretrained image" in saved["metrics"] and "pretrained@0.5 test_auc" in saved["summary"]
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 4 * (bundle.images["split"] == "test").sum()

    # features come from the cache the second time (keyed by weights + manifest)
    calls = []
    monkeypatch.setattr(feat_mod, "extract_features", lambda *a, **k: calls.append(1))
    run_probe(lambda init: model, bundle, "mass", fractions=(1.0,), seeds=(0,), out_dir=tmp_path / "again",
              cache_dir=tmp_path / "cache", n_boot=0)
    run_probe(lambda init: model, bundle, "mass", fractions=(1.0,), seeds=(0,), out_dir=tmp_path / "again",
              cache_dir=tmp_path / "cache", n_boot=0)
    assert calls == [], "the cache built by the first run is reused"


def test_features_are_eval_mode(eval_cohort: Path) -> None:
    """Dropout off and BN on running stats: extraction is deterministic and differs from train mode."""
    from mammoclip.models import create_model

    tiny_model = create_model("mammoclip-tiny")  # its own copy: the train-mode forward below updates BN stats
    bundle = load_bundle(eval_cohort)
    bundle.images = bundle.images.iloc[:6]
    a = extract_features(tiny_model, bundle, kinds=("pooled", "projected"))
    b = extract_features(tiny_model, bundle, kinds=("pooled",))
    assert np.array_equal(a["pooled"], b["pooled"])
    assert np.allclose(np.linalg.norm(a["projected"], axis=1), 1.0, atol=1e-5)
    from mammoclip.evaluate.features import image_batches

    _, x = next(image_batches(tiny_model, bundle, batch_size=6))
    tiny_model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        train_mode = tiny_model.image_features(x).numpy()
    assert not np.allclose(train_mode, a["pooled"], atol=1e-4), "train mode (dropout, batch stats) differs"


def test_probe_cli_with_random_baseline(tiny_model, eval_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """From a checkpoint directory: `pretrained` is its weights, `random` the same architecture re-initialised."""
    from mammoclip.models import save_checkpoint

    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "lp"
    rc = main(["probe", "--checkpoint", str(ckpt), "--manifest", str(eval_cohort), "--task", "mass",
               "--fractions", "0.5,1.0", "--seeds", "0", "--init", "pretrained,random", "--workers", "0",
               "--n-boot", "10", "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out / "data_efficiency.csv")
    assert set(table["init"]) == {"pretrained", "random"}
    assert len(list((out / "cache").glob("features-*.npz"))) == 2, "one feature set per init"
    assert (out / "index.html").read_text().count("data:image/png") >= 2
