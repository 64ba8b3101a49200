"""Run config (presets, overrides, validation) and the optimizer/schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mammoclip.errors import ConfigError
from mammoclip.train.config import load_config, write_run_config
from mammoclip.train.optim import build_optimizer, build_scheduler, param_groups
from tests.train.toy import ToyClip

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("preset", ["pretrain-b5-paper", "pretrain-b2-paper"])
def test_paper_presets_hold_the_paper_settings(preset: str) -> None:
    cfg = load_config(CONFIGS / f"{preset}.yaml", ["data.image_text=[m.csv]"])
    assert cfg.data.image_size == (1520, 912)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.optim.schedule) == (5e-5, 1e-4, 1, "cosine")
    assert (cfg.loop.batch_size, cfg.loop.epochs) == (4, 15) and cfg.loop.precision in ("bf16", "fp16")
    assert cfg.loss.kwargs == {"i2i_weight": 1.0, "t2t_weight": 0.5, "label_smoothing": 0.0}


def test_overrides_types_and_errors(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "pretrain-lite-cpu.yaml",
                      ["data.image_text=[a, b]", "optim.lr=3e-4", "loop.micro_batch=2", "data.image_size=[128, 80]"])
    assert cfg.data.image_text == ["a", "b"] and cfg.optim.lr == 3e-4 and cfg.loop.micro_batch == 2
    assert cfg.data.image_size == (128, 80)
    with pytest.raises(ConfigError, match="loop.epoch"):
        load_config(CONFIGS / "pretrain-lite-cpu.yaml", ["data.image_text=[a]", "loop.epoch=3"])
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["data.image_text=[a]", "loop.precision=fp8"])
    with pytest.raises(ConfigError, match="at least one manifest"):
        load_config(CONFIGS / "pretrain-lite-cpu.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["oops"])
    out = write_run_config(tmp_path, cfg.to_dict())
    doc = yaml.safe_load(out.read_text())
    assert "git_revision" in doc and doc["optim"]["lr"] == 3e-4
    assert load_config(None, [f"{k}={v}" for k, v in [("data.image_text", "[a, b]")]]).data.image_text == ["a", "b"]


def test_no_weight_decay_on_norms_biases_and_logit_scale() -> None:
    model = ToyClip()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {"image.1.weight", "image.5.weight", "tokens.weight", "text.1.weight"}
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]} and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, 1e-3, 0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_warmup_then_cosine_schedule() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, "cosine", warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear warm-up from 0
    assert lrs[8] == pytest.approx(1.0)  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(opt, "linear-ish", 1, 2)
