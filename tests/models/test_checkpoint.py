"""Checkpoints: our safetensors format, the official ``.tar`` import, refusal of malicious pickles."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from efficientnet_pytorch import EfficientNet
from transformers import BertConfig, BertModel

from mammoclip.errors import CheckpointError
from mammoclip.models import convert_official, create_model, get_tokenizer, load_checkpoint, save_checkpoint
from mammoclip.models.checkpoint import read_checkpoint_config


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = create_model("mammoclip-tiny", image_size=(96, 64)).eval()
    out = save_checkpoint(model, tmp_path / "ckpt", epoch=3, data={"images": 12})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    meta = read_checkpoint_config(out)
    assert meta["extra"] == {"epoch": 3, "data": {"images": 12}}
    assert meta["model"]["preprocess"]["image_size"] == [96, 64]
    assert meta["provenance"]["mammoclip_version"] and "torch" in meta["provenance"]
    loaded = load_checkpoint(out)
    assert not loaded.training and loaded.preprocess_cfg.image_size == (96, 64)
    x = torch.randn(2, 1, 96, 64)
    tok = get_tokenizer(loaded)
    enc = tok(["no mass", "calcification"])
    torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x))
    torch.testing.assert_close(loaded.encode_text(**enc), model.encode_text(**get_tokenizer(model)(["no mass", "calcification"])))
    assert tok.source == "tokenizer" and Path(loaded.source_dir) == out


def test_strict_loading_names_keys(tmp_path: Path) -> None:
    out = save_checkpoint(create_model("mammoclip-tiny"), tmp_path / "a", save_tokenizer=False)
    meta = json.loads((out / "config.json").read_text())
    meta["model"]["embed_dim"] = 32
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"image_projection\.weight"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="not a mammoclip checkpoint"):
        load_checkpoint(tmp_path)


class _Evil:
    """Unpickling this would create a file (the classic pickle code-execution attack)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


def test_malicious_pickle_stays_inert(tmp_path: Path) -> None:
    """The payload becomes a placeholder (the file is read, nothing runs); the file is then judged on its weights."""
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "b5-model-best-epoch-7.tar"
    torch.save({"model": {"image_encoder._conv_stem.weight": torch.zeros(1)}, "config": _Evil(marker)}, bad)
    for load in (load_checkpoint, convert_official):
        with pytest.raises(CheckpointError, match="no image_encoder._conv_head.weight"):
            load(bad)
    assert not marker.exists()


def _official_dict(ref_image: EfficientNet, ref_text: BertModel, img_proj: torch.nn.Linear,
                   txt_proj: torch.nn.Linear, logit_scale: torch.Tensor) -> dict:
    """A dict with exactly the official layout (docs/original.md §3 state dict, §5 checkpoint keys)."""
    model = {f"image_encoder.{k}": v for k, v in ref_image.state_dict().items() if not k.startswith("_fc.")}
    model.update({f"text_encoder.text_encoder.{k}": v for k, v in ref_text.state_dict().items()})
    model.update({f"image_projection.projection.{k}": v for k, v in img_proj.state_dict().items()})
    model.update({f"text_projection.projection.{k}": v for k, v in txt_proj.state_dict().items()})
    model["logit_scale"] = logit_scale
    cluster = "/restricted/projectnb/batmanlab/shared/Mammo-CLIP"
    config = {
        "base": {"data_dir": cluster, "img_size_h": 1520, "img_size_w": 912, "text_max_length": 256},
        "data_train": {"img_text": {"name": "img_text", "data_type": "image_text"}},
        "dataloader": {"train": {"batch_size": 4, "num_workers": 0}},
        "tokenizer": {"source": "huggingface", "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT",
                      "cache_dir": f"{cluster}/src/codebase/outputs/huggingface/tokenizers"},
        "transform": {"config": {"affine_transform_degree": 20}},
        "model": {"name": "clip_custom", "temperature": 0.07,
                  "image_encoder": {"source": "cnn", "name": "tf_efficientnet_b5_ns-detect", "pretrained": True,
                                    "model_type": "cnn"},
                  "text_encoder": {"source": "huggingface", "name": "bert", "pooling": "eos",
                                   "cache_dir": f"{cluster}/src/codebase/outputs/huggingface/models",
                                   "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT"},
                  "projection_head": {"name": "linear", "proj_dim": 512, "dropout": 0.1}},
        "optimizer": {"name": "adamw", "config": {"lr": 5e-5, "weight_decay": 1e-4}},
        "scheduler": {"name": "cosine", "config": {"total_epochs": 15, "warmup_epochs": 1,
                                                    "total_steps": 1000, "warmup_steps": 66}},
        "loss": {"breast_clip": {"i2i_weight": 1.0, "t2t_weight": 0.5}},
    }
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]},
            "scheduler": {"last_epoch": 7, "_step_count": 8}, "config": config, "epoch": 7,
            "train_loss": 1.2345}


@pytest.mark.slow
def test_official_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref_image = EfficientNet.from_name("efficientnet-b2").eval()
    # The full Bio_ClinicalBERT shape: shows the official text key layout maps completely.
    ref_text = BertModel(BertConfig(vocab_size=28996)).eval()
    img_proj, txt_proj = torch.nn.Linear(1408, 512), torch.nn.Linear(768, 512)
    tar = tmp_path / "b2-model-best-epoch-10.tar"
    torch.save(_official_dict(ref_image, ref_text, img_proj, txt_proj, torch.tensor(2.9)), tar)

    out = tmp_path / "converted"
    convert_official(tar, out, image_size=(128, 96))
    meta = read_checkpoint_config(out)
    assert meta["extra"]["official"]["arch"] == "b2" and meta["extra"]["official"]["epoch"] == 7
    assert "restricted" not in json.dumps(meta)  # cluster paths in the official config are not carried
    model = load_checkpoint(out)
    assert model.cfg.text.hf_config["num_hidden_layers"] == 12 and model.cfg.text.pooling == "eos"

    x = torch.randn(2, 1, 128, 96)
    ids = torch.randint(1000, 28996, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref_img = F.normalize(img_proj(ref_image.extract_features(x.expand(-1, 3, -1, -1)).mean(dim=(2, 3))), dim=-1)
        hidden = ref_text(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, 768)
        eos = hidden[torch.arange(2), mask.sum(1) - 1]  # final [SEP]
        ref_txt = F.normalize(txt_proj(eos), dim=-1)
        out_dict = model({"image": x, "input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(out_dict["image_embeddings"], ref_img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_dict["text_embeddings"], ref_txt, atol=1e-4, rtol=1e-4)
    assert out_dict["logit_scale"].item() == pytest.approx(torch.tensor(2.9).exp().item(), rel=1e-6)
    # The .tar also loads directly (converted in memory), and a wrong --arch is an error.
    direct = load_checkpoint(tar)
    torch.testing.assert_close(direct.image_projection.weight, img_proj.weight)
    with pytest.raises(CheckpointError, match="EfficientNet-B2"):
        convert_official(tar, arch="b5")


def test_official_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref_image = EfficientNet.from_name("efficientnet-b2")
    ref_text = BertModel(BertConfig(vocab_size=28996, hidden_size=64, num_hidden_layers=1,
                                    num_attention_heads=1, intermediate_size=64))
    d = _official_dict(ref_image, ref_text, torch.nn.Linear(1408, 512), torch.nn.Linear(64, 512), torch.tensor(2.6))
    del d["model"]["text_projection.projection.bias"]
    d["model"]["mystery.weight"] = torch.zeros(2)
    tar = tmp_path / "broken.tar"
    torch.save(d, tar)
    with pytest.raises(CheckpointError, match=r"text_projection\.bias.*mystery\.weight"):
        convert_official(tar)
