"""The detector: taps per architecture, frozen encoder stays bitwise unchanged, checkpoints, bad sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mammoclip.detect.config import DetectorCfg, DetectTrainCfg, load_detect_config
from mammoclip.detect.model import build_detector, load_detector, load_image_tower
from mammoclip.detect.run import train_detector
from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models import create_model, save_checkpoint

SMALL = DetectorCfg(image_size=(128, 80), fpn_channels=32)


@pytest.mark.parametrize(("name", "channels"), [("mammoclip-tiny", [32, 48, 64]), ("mammoclip-lite", [40, 112, 320]),
                                                ("mammoclip-b5-paper", [64, 176, 512])])
def test_default_taps_are_strides_8_16_32(name: str, channels: list[int]):
    det = build_detector(name, SMALL, init="random")
    taps = det.describe_taps()
    assert [t["stride"] for t in taps] == [8, 16, 32] and [t["channels"] for t in taps] == channels
    assert det.backbone.strides == [8, 16, 32, 64, 128]
    feats = det.backbone(torch.zeros(1, 1, 128, 80))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 10), (8, 5), (4, 3), (2, 2), (1, 1)]


def test_bad_taps_fail():
    with pytest.raises(ConfigError, match="tap 9 out of range"):
        build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), taps=[2, 9]), init="random")


def _losses_and_detections(det, n: int = 4):
    torch.manual_seed(0)
    images = torch.randint(0, 255, (n, 1, 128, 80), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]), "labels": torch.tensor([0])}] * (n - 1)
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})  # a normal image
    return images, targets


def test_normal_images_contribute_focal_loss():
    det = build_detector("mammoclip-tiny", SMALL, init="random").train()
    images, targets = _losses_and_detections(det)
    only_normal = det(images[-1:], targets[-1:])
    assert only_normal["classification"] > 0 and only_normal["bbox_regression"] == 0


def test_focal_parameters_change_the_loss():
    torch.manual_seed(0)
    a = build_detector("mammoclip-tiny", SMALL, init="random").train()
    b = build_detector("mammoclip-tiny", DetectorCfg(image_size=(128, 80), fpn_channels=32, focal_gamma=0.0),
                       init="random").train()
    b.load_state_dict(a.state_dict())
    images, targets = _losses_and_detections(a)
    with torch.no_grad():
        assert float(b(images, targets)["classification"]) > 2 * float(a(images, targets)["classification"])


def _encoder_state(det) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in det.encoder.state_dict().items()}


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_training_leaves_every_encoder_tensor_bitwise_unchanged(synthetic_cohort: Path, tmp_path: Path,
                                                                       freeze: bool):
    torch.manual_seed(0)
    model = create_model("mammoclip-tiny", pretrained=False)
    before = {k: v.detach().clone() for k, v in model.image_tower.state_dict().items()}
    run = train_detector(synthetic_cohort, SMALL, DetectTrainCfg(epochs=1, batch_size=8, freeze_encoder=freeze,
                                                                  lr=1e-3, encoder_lr_mult=1.0),
                         tmp_path / "run", model=model, log_fn=lambda s: None)
    # the detector trains a copy of the tower: the caller's model is left as it was, in both protocols
    assert run.detector is not None and run.detector.encoder is not model.image_tower
    assert all(torch.equal(v, before[k]) for k, v in model.image_tower.state_dict().items())
    assert all(p.requires_grad for p in model.image_tower.parameters())
    after = _encoder_state(run.detector)
    bn_buffers = [k for k in before if k.endswith("running_mean")]
    assert bn_buffers and set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if freeze:
        assert changed == []
        assert not run.detector.encoder.training  # BN in eval mode even after train()
        assert all(not p.requires_grad for p in run.detector.encoder.parameters())
    else:  # the same run fine-tuned moves weights and BN statistics: the check above can fail
        assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("weight") for k in changed)


def test_checkpoint_round_trip_gives_identical_detections(tmp_path: Path):
    torch.manual_seed(0)
    cfg = DetectorCfg(image_size=(128, 80), fpn_channels=32, score_thresh=0.0, max_detections=7)
    det = build_detector("mammoclip-tiny", cfg, init="random").eval()
    det.save(tmp_path / "det")
    again = load_detector(tmp_path / "det")
    images, _ = _losses_and_detections(det)
    with torch.no_grad():
        a, b = det(images), again(images)
    assert len(a[0]["boxes"]) == 7
    for x, y in zip(a, b):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(x[k], y[k])
    meta = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert meta["format"] == "mammoclip-detector" and [t["stride"] for t in meta["taps"]] == [8, 16, 32]
    # the weights get the permissions of every other output file (safetensors alone writes 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "det" / "detector.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_tower_loads_from_a_mammoclip_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("mammoclip-tiny", pretrained=False)
    save_checkpoint(model, tmp_path / "ckpt", save_tokenizer=False)
    tower, cfg = load_image_tower(tmp_path / "ckpt")
    assert cfg.name == "mammoclip-tiny"
    for k, v in model.image_tower.state_dict().items():
        assert torch.equal(v, tower.state_dict()[k])
    random_tower, _ = load_image_tower(tmp_path / "ckpt", init="random")
    assert not torch.equal(random_tower.trunk.conv_stem.weight, tower.trunk.conv_stem.weight)


def test_checkpoint_without_image_tower_is_a_one_line_error(tmp_path: Path):
    model = create_model("mammoclip-tiny", pretrained=False)
    folder = save_checkpoint(model, tmp_path / "ckpt", save_tokenizer=False)
    text_only = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("image_tower.")}
    save_file(text_only, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors has no image tower") as err:
        load_image_tower(folder)
    assert "\n" not in str(err.value)


def test_detector_checkpoint_is_not_a_tower_and_a_tower_is_not_a_detector(tmp_path: Path):
    det = build_detector("mammoclip-tiny", SMALL, init="random")
    det.save(tmp_path / "det")
    with pytest.raises(CheckpointError, match="is a detector checkpoint"):
        load_image_tower(tmp_path / "det")
    save_checkpoint(create_model("mammoclip-tiny", pretrained=False), tmp_path / "ckpt", save_tokenizer=False)
    with pytest.raises(CheckpointError, match="is not a detector checkpoint"):
        load_detector(tmp_path / "ckpt")


def test_yaml_config_and_overrides(tmp_path: Path):
    path = tmp_path / "d.yaml"
    path.write_text("detector:\n  classes: [mass, calcification]\n  image_size: [512, 512]\ntrain:\n  epochs: 3\n")
    det, run = load_detect_config(path, train__epochs=5, detector__score_thresh=None)
    assert det.classes == ["mass", "calcification"] and det.image_size == (512, 512) and run.epochs == 5
    path.write_text("detector:\n  anchors: 3\n")
    with pytest.raises(ConfigError, match=r"unknown detector option\(s\) \['anchors'\]"):
        load_detect_config(path)


def test_paper_preset_parses():
    root = Path(__file__).resolve().parents[2]
    det, run = load_detect_config(root / "configs" / "detect-b5-paper.yaml")
    assert det.image_size == (1520, 912) and run.checkpoint == "mammoclip-b5-paper"
