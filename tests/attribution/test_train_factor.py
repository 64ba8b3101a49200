"""Mapper training on the one loop with mammoclip-tiny: a bitwise-frozen encoder, resume, bad input, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mammoclip.attribution import AttributeSpec, FactorMapper
from mammoclip.cli.main import main
from mammoclip.errors import ConfigError, DataError
from mammoclip.train.factor import FactorConfig, FactorModel, FeatureAugment, train_factor
from mammoclip.train.tasks import list_tasks

SIZE = (256, 160)  # the shared synthetic cohort's


def _tiny(size: tuple[int, int] = SIZE) -> torch.nn.Module:
    from mammoclip.models import create_model

    torch.manual_seed(0)
    return create_model("mammoclip-tiny", pretrained=False, image_size=size)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_encoder_stays_bitwise_frozen_and_resume_continues(synthetic_cohort: Path, tmp_path: Path) -> None:
    assert "factor" in list_tasks()
    clip = _tiny()
    clip.train()  # even a model handed over in train mode must not update its BatchNorm statistics
    before = _snapshot(clip)
    # augmentation on: it acts on the maps in the model's forward, never on the encoder
    cfg = FactorConfig(epochs=1, batch_size=4, lr=1e-2, cache_features=False, device="cpu", shift=2, hflip=True,
                       descriptor_dropout=0.2)
    run = train_factor(clip, synthetic_cohort, cfg, out_dir=tmp_path / "run")
    after = clip.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():  # weights, BN running means/vars and num_batches_tracked
        assert torch.equal(after[k], v), k
    steps = int((pd.read_csv(synthetic_cohort)["split"] == "train").sum()) // 4
    assert run.fit.steps == steps >= 2
    torch.manual_seed(cfg.seed)  # the draw train_factor starts the heads from
    start = FactorMapper(run.attributes, run.mapper.text, run.mapper.feature_shape, run.mapper.image_size,
                         tap=run.mapper.tap)
    assert not torch.equal(start.w1, run.mapper.w1) and not torch.equal(start.w2, run.mapper.w2)  # they learned
    assert run.mapper_dir == tmp_path / "run" / "best"
    meta = json.loads((run.mapper_dir / "mapper.json").read_text())
    assert meta["loss_form"] == "corrected" and len(meta["image_fingerprint"]) == 16
    assert meta["tap"] == -2 and meta["feature_shape"][1:] == [16, 10]  # the default tap: stride 16 at 256x160
    assert not any(p.name.startswith("model") for p in run.mapper_dir.iterdir())  # the encoder is not copied
    again = train_factor(clip, synthetic_cohort, FactorConfig(epochs=2, batch_size=4, lr=1e-2, cache_features=True,
                                                              device="cpu"), out_dir=tmp_path / "run", resume=True)
    assert again.fit.steps == 2 * steps and len(again.fit.history) == 2


def test_manifest_without_the_labels_is_refused(synthetic_cohort: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_cohort.parent, tmp_path / "c")
    manifest = tmp_path / "c" / "manifest.csv"
    pd.read_csv(manifest).drop(columns=["calcification"]).to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"no label column 'calcification' \(for 'calcification'\)"):
        train_factor(_tiny(), manifest, FactorConfig(epochs=1, batch_size=4), out_dir=tmp_path / "run")


def test_images_of_another_size_are_refused(synthetic_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="images are 256x160 .* the model expects 128x80"):
        train_factor(_tiny((128, 80)), synthetic_cohort, FactorConfig(epochs=1, batch_size=4), out_dir=tmp_path / "r")


def test_cli_train_explain_and_eval(synthetic_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "ckpt"
    from mammoclip.models import save_checkpoint

    save_checkpoint(_tiny(), ckpt)
    run = tmp_path / "run"
    assert main(["factor", "train", "--checkpoint", str(ckpt), "--manifest", str(synthetic_cohort), "--epochs", "1",
                 "--batch-size", "4", "--lr", "1e-2", "--device", "cpu", "--out", str(run)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["attributes"] == ["mass", "calcification"] and line["steps"] >= 2

    out = tmp_path / "explain"
    assert main(["explain", str(synthetic_cohort), "--checkpoint", str(ckpt), "--mapper", str(run),
                 "--attributes", "mass", "--split", "test", "--out", str(out)]) == 0
    regions = pd.read_csv(out / "regions.csv")
    n_test = int((pd.read_csv(synthetic_cohort)["split"] == "test").sum())
    assert regions["image_id"].nunique() == n_test and set(regions["attribute"]) == {"mass"}
    assert (regions["xmin"] < regions["xmax"]).all() and regions["peak"].between(0, 1).all()
    heat = np.load(next((out / "heatmaps").glob("*.npy")))
    assert heat.shape == SIZE and heat.min() == 0.0 and heat.max() == 1.0
    with Image.open(next((out / "overlays").glob("*.png"))) as img:
        assert img.mode == "RGB" and img.size == (320, 512)  # 160 x 256 drawn at twice the size
    assert len(pd.read_csv(out / "scores.csv")) == n_test

    png = synthetic_cohort.parent / pd.read_csv(synthetic_cohort)["path"].iloc[0]
    assert main(["explain", str(png), "--checkpoint", str(ckpt), "--mapper", str(run), "--out",
                 str(tmp_path / "one"), "--no-overlays"]) == 0
    assert len(list((tmp_path / "one" / "heatmaps").glob("*.npy"))) == 2

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 60), np.uint8)).save(small)
    capsys.readouterr()
    assert main(["explain", str(small), "--checkpoint", str(ckpt), "--mapper", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "100x60 (HxW) but the checkpoint and mapper were trained at 256x160" in capsys.readouterr().err

    ev = tmp_path / "eval"
    assert main(["factor", "eval", "--checkpoint", str(ckpt), "--mapper", str(run), "--manifest", str(synthetic_cohort),
                 "--split", "all", "--n-boot", "20", "--out", str(ev)]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["methods"] == ["factor", "top_channels", "breast_prior", "gradcam"]
    table = pd.read_csv(ev / "localization.csv")
    assert set(table["method"]) == set(res["methods"]) and table["pointing"].isin([0.0, 1.0]).all()
    assert set(res["beats_breast_prior"]) <= {"mass", "calcification"}


def test_cli_tap_last_reproduces_the_original_map(synthetic_cohort: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "ckpt"
    from mammoclip.models import save_checkpoint

    save_checkpoint(_tiny(), ckpt)
    args = ["factor", "train", "--checkpoint", str(ckpt), "--manifest", str(synthetic_cohort), "--epochs", "1",
            "--batch-size", "4", "--max-steps", "1", "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "last"), "--tap", "last"]) == 0
    folder = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mapper"])
    meta = json.loads((folder / "mapper.json").read_text())
    assert meta["tap"] is None and meta["feature_shape"][1:] == [8, 5]  # the final map: stride 32
    with pytest.raises(SystemExit):
        main([*args, str(tmp_path / "bad"), "--tap", "3"])
    assert "must be 'last' or an int in [-5, -1]" in capsys.readouterr().err


def _peaks(fmap: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` with one nonzero cell per channel -> ``(B, C, 2)`` (row, column) of that cell."""
    flat = fmap.flatten(2).abs().argmax(-1)  # (B, C)
    return torch.stack([flat // fmap.shape[-1], flat % fmap.shape[-1]], dim=-1)


def test_shift_moves_every_channel_of_an_image_by_the_same_cells_with_zero_fill() -> None:
    b, c, h, w, k = 400, 5, 9, 7, 2
    fmap = torch.zeros(b, c, h, w)
    rows, cols = torch.randint(k, h - k, (c,)), torch.randint(k, w - k, (c,))  # peaks that stay inside
    fmap[:, torch.arange(c), rows, cols] = torch.arange(1.0, c + 1)
    out = FeatureAugment(shift=k)(fmap, torch.Generator().manual_seed(0))
    moved = _peaks(out) - torch.stack([rows, cols], dim=-1)  # (B, C, 2)
    assert (moved == moved[:, :1]).all()  # one displacement per image, shared by its channels
    assert moved.abs().max() == k
    assert len({tuple(v) for v in moved[:, 0].tolist()}) == (2 * k + 1) ** 2  # every shift in [-k, k]^2 drawn
    assert torch.equal(out.sum(dim=(2, 3)), fmap.sum(dim=(2, 3)))  # the peaks moved, values unchanged
    ones = FeatureAugment(shift=k)(torch.ones(b, 2, h, w), torch.Generator().manual_seed(0))
    dy, dx = moved[:, 0, 0], moved[:, 0, 1]  # the same generator: the same draws
    expect = (h - dy.abs()) * (w - dx.abs())  # cells that stay on the map; the vacated ones are 0
    assert torch.equal(ones.sum(dim=(2, 3)), expect[:, None].expand(b, 2).float())
    assert set(ones.unique().tolist()) == {0.0, 1.0}


def test_flips_mirror_all_channels_of_an_image_together() -> None:
    b, c, h, w = 200, 4, 6, 5
    fmap = torch.zeros(b, c, h, w)
    rows, cols = torch.tensor([0, 1, 4, 5]), torch.tensor([0, 3, 1, 4])
    fmap[:, torch.arange(c), rows, cols] = 1.0
    for kind, aug, axis, size in (("h", FeatureAugment(hflip=True), 1, w), ("v", FeatureAugment(vflip=True), 0, h)):
        got = _peaks(aug(fmap, torch.Generator().manual_seed(1)))  # (B, C, 2)
        orig = torch.stack([rows, cols], dim=-1)
        flipped = (got[..., axis] == size - 1 - orig[:, axis]) & (got[..., 1 - axis] == orig[:, 1 - axis])
        kept = (got == orig).all(-1)
        assert (flipped | kept).all(), kind
        per_image = flipped.all(dim=1)
        assert (per_image | kept.all(dim=1)).all(), kind  # never some channels flipped and others not
        assert 0.3 < per_image.float().mean() < 0.7, kind  # p = 1/2


def test_augmentation_only_in_training_mode_and_validated() -> None:
    clip = _tiny((128, 80))
    mapper = FactorMapper([AttributeSpec("mass", "mass", ("mass",))], torch.randn(1, clip.embed_dim), (16, 6, 4),
                          (128, 80), hidden=8)
    model = FactorModel(clip, mapper, FeatureAugment(shift=2, hflip=True, dropout=0.5))
    fmap = torch.randn(4, 16, 6, 4)
    model.eval()
    assert torch.equal(model({"fmap": fmap}), mapper.similarities(fmap))  # validation sees the raw maps
    model.train()
    assert not torch.allclose(model({"fmap": fmap}), mapper.similarities(fmap))
    assert FactorConfig(shift=3, hflip=True).augment == FeatureAugment(3, True, False, 0.0)
    with pytest.raises(ConfigError, match="shift must be >= 0"):
        FactorConfig(shift=-1)
    with pytest.raises(ConfigError, match="descriptor_norm must be one of"):
        FactorConfig(descriptor_norm="l3")


def test_cli_descriptor_and_augmentation_options_reach_the_run(synthetic_cohort: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    import yaml

    ckpt = tmp_path / "ckpt"
    from mammoclip.models import save_checkpoint

    save_checkpoint(_tiny(), ckpt)
    args = ["factor", "train", "--checkpoint", str(ckpt), "--manifest", str(synthetic_cohort), "--epochs", "1",
            "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--out"]
    run = tmp_path / "sorted"
    assert main([*args, str(run), "--descriptor", "sorted", "--channel-ids", "--shift", "2", "--hflip", "--vflip",
                 "--descriptor-dropout", "0.25"]) == 0
    folder = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mapper"])
    meta = json.loads((folder / "mapper.json").read_text())
    assert meta["descriptor_norm"] == "sorted" and meta["channel_ids"] is True  # saved: heatmaps follow them
    cfg = yaml.safe_load((run / "args.yaml").read_text())["factor"]  # training-only options: in the run record
    assert (cfg["shift"], cfg["hflip"], cfg["vflip"], cfg["descriptor_dropout"]) == (2, True, True, 0.25)

    assert main([*args, str(tmp_path / "plain")]) == 0  # without the options: FactorConfig's defaults
    folder = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mapper"])
    meta = json.loads((folder / "mapper.json").read_text())
    default = FactorConfig()
    assert (meta["descriptor_norm"], meta["channel_ids"]) == (default.descriptor_norm, default.channel_ids)
    cfg = yaml.safe_load((tmp_path / "plain" / "args.yaml").read_text())["factor"]
    assert (cfg["shift"], cfg["hflip"], cfg["vflip"], cfg["descriptor_dropout"]) == (0, False, False, 0.0)

    for bad, message in ((["--descriptor", "l3"], "must be one of channel, image, none, sorted, got 'l3'"),
                         (["--descriptor-dropout", "1"], "must be in [0, 1), got '1'"),
                         (["--shift", "-1"], "--shift")):
        with pytest.raises(SystemExit):
            main([*args, str(tmp_path / "bad"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
