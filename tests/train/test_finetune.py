"""Fine-tuning with mammoclip-tiny on the training loop: outputs, what changes, what is never seen."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammoclip.data.manifest import load_bundle
from mammoclip.train import finetune as ft
from mammoclip.train.finetune import ClassifyTask, FinetuneConfig, ImageClassifier, run_finetune
from mammoclip.train.tasks import list_tasks

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mammoclip.synthetic import generate_cohort

    # seed 1: 5 test patients with both classes of `mass`
    return generate_cohort(tmp_path_factory.mktemp("ft"), 16, seed=1, image_size=(128, 80), progress=False)


def _tiny() -> torch.nn.Module:
    from mammoclip.models import create_model

    torch.manual_seed(0)
    return create_model("mammoclip-tiny")


def test_classify_task_registered_and_weighted() -> None:
    assert "classify" in list_tasks()
    clip = _tiny()
    model = ImageClassifier(clip, 1)
    assert all(not p.requires_grad for n, p in clip.named_parameters() if not n.startswith("image_tower."))
    model.eval()  # dropout off: both forwards below must see the same logits
    task = ClassifyTask(model, 2, [3.0])
    batch = {"image": torch.randn(4, 1, 128, 80), "label": torch.tensor([0, 1, 0, 0])}
    loss = task(batch)["loss"]
    logits = model(batch["image"])[:, 0]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float(),
                                                                    pos_weight=torch.tensor([3.0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_finetune_selects_on_val_and_scores_test(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(cohort)
    test_ids = set(bundle.images.loc[bundle.images["split"] == "test", "image_id"].astype(str))
    seen_by_selection: list[set[str]] = []
    real_predict = ft.predict

    def spy(model, b, k, **kw):  # noqa: ANN001, ANN202 - records which images each prediction sees
        seen_by_selection.append(set(b.images["image_id"].astype(str)))
        return real_predict(model, b, k, **kw)

    monkeypatch.setattr(ft, "predict", spy)
    clips: list[torch.nn.Module] = []

    def factory(init: str) -> torch.nn.Module:
        clips.append(_tiny())
        return clips[-1]

    start = {k: v.clone() for k, v in _tiny().state_dict().items()}
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, device="cpu")
    res = run_finetune(factory, bundle, "mass", fractions=(1.0,), seeds=(0,), out_dir=tmp_path, cfg=cfg, n_boot=10)

    # every prediction but the last (the final test scoring) is validation during training
    assert len(seen_by_selection) == cfg.epochs + 1
    assert all(not s & test_ids for s in seen_by_selection[:-1]), "epoch selection touched test images"
    assert seen_by_selection[-1] == test_ids
    tuned = clips[0].state_dict()
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert any(k.startswith("image_tower.") for k in changed)
    assert not any(k.startswith("text_tower.") for k in changed), "the text tower stays frozen"

    assert (tmp_path / "fits" / "pretrained-f1-s0" / "best" / "model.pt").exists()
    assert not (tmp_path / "fits" / "pretrained-f1-s0" / "checkpoints").exists()
    table = pd.read_csv(tmp_path / "data_efficiency.csv")
    assert len(table) == 1 and 0.0 <= table["test_auc"].iloc[0] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["kind"] == "finetune"
    assert res["summary"]
    assert (tmp_path / "data_efficiency.png").exists() and (tmp_path / "index.html").exists()
