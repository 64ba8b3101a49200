"""``mammoclip models list|show`` and ``mammoclip convert-official``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (`make test` sets it too)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest
import torch
from efficientnet_pytorch import EfficientNet
from transformers import BertConfig, BertModel

from mammoclip.cli.main import main
from mammoclip.models import load_checkpoint
from tests.models.test_checkpoint import _official_dict


def test_models_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mammoclip-tiny", "mammoclip-lite", "mammoclip-b5-paper", "mammoclip-b2-paper"):
        assert name in out
    assert "tf_efficientnet_b5" in out and "1520x912" in out
    assert main(["models", "show", "mammoclip-tiny", "--params"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["embed_dim"] == 64 and shown["parameters"]["total"] > shown["parameters"]["image_tower"] > 0
    assert main(["models", "show", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_convert_official_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    text = BertModel(BertConfig(vocab_size=28996, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=128))
    tar = tmp_path / "b2-model-best-epoch-10.tar"
    torch.save(_official_dict(EfficientNet.from_name("efficientnet-b2"), text, torch.nn.Linear(1408, 512),
                              torch.nn.Linear(64, 512), torch.tensor(2.7)), tar)
    out = tmp_path / "out"
    assert main(["convert-official", str(tar), str(out), "--arch", "b2"]) == 0
    printed = capsys.readouterr().out
    assert "EfficientNet-B2" in printed and "tokenizer not saved" in printed
    assert load_checkpoint(out).image_tower.num_features == 1408
    assert main(["models", "show", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["extra"]["official"]["arch"] == "b2"
    assert main(["convert-official", str(tar), str(out), "--arch", "b5"]) == 2
    assert "EfficientNet-B2" in capsys.readouterr().err
