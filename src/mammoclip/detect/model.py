"""RetinaNet on a Mammo-CLIP image tower: taps, feature pyramid, focal loss, checkpoints.

torchvision's :class:`~torchvision.models.detection.RetinaNet` supplies the anchors, the box coder,
the matcher (IoU >= 0.5 positive, < 0.4 negative, best anchor of every box kept), the heads and the
per-class NMS. What is ours:

* **the backbone** (:class:`TowerFPN`): the tower's ``forward_intermediates`` at the ``feature_info``
  levels named by ``DetectorCfg.taps`` (default: the last three, strides 8/16/32 on every EfficientNet
  of the registry), a torchvision FPN and P6/P7 from P5 (strides 64/128);
* **the input transform** (:class:`DetectorInput`): torchvision's ``GeneralizedRCNNTransform`` resizes
  and uses ImageNet statistics; images here arrive at the input size already, as stored integers, and
  are normalised exactly as the tower was trained (:func:`mammoclip.data.transforms.normalize_images`);
* **the focal loss** with configurable alpha and gamma (:class:`FocalClassificationHead`);
* **a frozen encoder that stays frozen**: no gradient, eval mode whatever ``train()`` is called with,
  and no autograd graph through it.

A detector checkpoint is a folder: ``detector.safetensors`` + ``detector.json`` (the detector config, the
tower's model config including its preprocessing, provenance). Loading never unpickles.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from mammoclip.data.transforms import normalize_images
from mammoclip.detect.config import DetectorCfg
from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models import ImageTower, MammoCLIP, MammoClipCfg, load_checkpoint, read_checkpoint_config
from mammoclip.models.checkpoint import provenance, save_safetensors
from mammoclip.models.registry import resolve_config

DETECTOR_FORMAT = "mammoclip-detector"
DETECTOR_VERSION = 1
DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_CONFIG = "detector.json"
#: Anchor aspect ratios (height / width) and octave scales per level (RetinaNet; docs/original.md §6.3).
ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
ANCHOR_OCTAVES: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


def feature_info(tower: ImageTower) -> list[dict[str, Any]]:
    """timm's ``feature_info`` of the trunk: one dict (module, num_chs, reduction) per tappable level."""
    return [dict(i) for i in cast(list, tower.trunk.feature_info)]


def default_taps(tower: ImageTower) -> list[int]:
    """The last three ``feature_info`` levels (strides 8, 16, 32 on the registry's EfficientNets)."""
    n = len(feature_info(tower))
    return list(range(max(0, n - 3), n))


def tap_info(tower: ImageTower, taps: list[int]) -> list[dict[str, Any]]:
    """``feature_info`` entries (module, channels, stride) of the tapped levels; bad indices fail."""
    info = feature_info(tower)
    for t in taps:
        if not 0 <= t < len(info):
            raise ConfigError(f"detector tap {t} out of range: {tower.cfg.model_name} has {len(info)} levels "
                              f"({[f['module'] for f in info]})")
    if sorted(taps) != list(taps) or len(set(taps)) != len(taps):
        raise ConfigError(f"detector taps must be increasing, got {taps}")
    return [info[t] for t in taps]


class TowerFPN(nn.Module):
    """Image tower taps -> FPN -> P3..P7 (``OrderedDict`` of ``(B, C, h, w)``); ``out_channels`` = C."""

    def __init__(self, tower: ImageTower, taps: list[int], channels: int) -> None:
        super().__init__()
        self.tower = tower
        self.taps = list(taps)
        self.info = tap_info(tower, self.taps)
        self.fpn = FeaturePyramidNetwork([int(i["num_chs"]) for i in self.info], channels,
                                         extra_blocks=LastLevelP6P7(channels, channels))
        self.out_channels = channels
        last = int(self.info[-1]["reduction"])
        #: Stride of every pyramid level, taps first then P6 and P7.
        self.strides = [int(i["reduction"]) for i in self.info] + [2 * last, 4 * last]
        self.frozen = False

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = self.tower.forward_intermediates(x, indices=self.taps)
        return self.fpn(OrderedDict((str(i), f.contiguous()) for i, f in enumerate(feats)))


class DetectorInput(nn.Module):
    """Stack stored-integer images and normalise them as the tower expects; no resizing.

    Stands in for torchvision's ``GeneralizedRCNNTransform`` (same ``forward``/``postprocess``), so
    boxes stay in input pixels in and out.
    """

    def __init__(self, clip_cfg: MammoClipCfg) -> None:
        super().__init__()
        self.preprocess = clip_cfg.preprocess

    def forward(self, images: Any, targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[ImageList, list[dict[str, torch.Tensor]] | None]:
        batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))  # (B, 1, H, W)
        x = normalize_images(batch, self.preprocess)
        return ImageList(x, [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0]), targets

    def postprocess(self, result: list[dict[str, torch.Tensor]], image_shapes: Any, original_image_sizes: Any
                    ) -> list[dict[str, torch.Tensor]]:
        return result


class FocalClassificationHead(RetinaNetClassificationHead):
    """torchvision's classification head with the focal loss's alpha and gamma as parameters."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, alpha: float, gamma: float) -> None:
        super().__init__(in_channels, num_anchors, num_classes)
        self.alpha, self.gamma = alpha, gamma

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     matched_idxs: list[torch.Tensor]) -> torch.Tensor:
        """Focal loss per image over non-ignored anchors / max(1, positives), averaged over images.

        An image without boxes has every anchor negative, so normal images teach the detector what
        not to fire on (the original skips them, docs/original.md §6.3).
        """
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            foreground = matched >= 0
            wanted = torch.zeros_like(logits)  # (anchors, K)
            wanted[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], wanted[valid], alpha=self.alpha, gamma=self.gamma, reduction="sum")
            losses.append(loss / max(1, int(foreground.sum())))
        return torch.stack(losses).sum() / len(targets)


class MammoDetector(nn.Module):
    """A RetinaNet whose backbone is a Mammo-CLIP image tower.

    ``detector(images, targets)`` in train mode returns ``{"classification", "bbox_regression"}``
    losses; in eval mode a list of ``{"boxes" (N, 4) input pixels, "scores", "labels" (class index)}``.
    ``images`` is a ``(B, 1, H, W)`` tensor of stored pixel values at ``cfg.image_size``.
    """

    def __init__(self, tower: ImageTower, clip_cfg: MammoClipCfg, cfg: DetectorCfg) -> None:
        super().__init__()
        self.cfg, self.clip_cfg = cfg, clip_cfg
        taps = cfg.taps if cfg.taps is not None else default_taps(tower)
        backbone = TowerFPN(tower, taps, cfg.fpn_channels)
        sizes = tuple(tuple(int(round(cfg.anchor_scale * s * o)) for o in ANCHOR_OCTAVES) for s in backbone.strides)
        anchors = AnchorGenerator(sizes, (ANCHOR_RATIOS,) * len(sizes))
        n_anchors = anchors.num_anchors_per_location()[0]
        head = RetinaNetHead(cfg.fpn_channels, n_anchors, len(cfg.classes))
        head.classification_head = FocalClassificationHead(cfg.fpn_channels, n_anchors, len(cfg.classes),
                                                           cfg.focal_alpha, cfg.focal_gamma)
        self.net = RetinaNet(backbone, len(cfg.classes), anchor_generator=anchors, head=head,
                             score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                             detections_per_img=cfg.max_detections)
        self.net.transform = DetectorInput(clip_cfg)
        self.taps = taps

    @property
    def backbone(self) -> TowerFPN:
        return self.net.backbone

    @property
    def encoder(self) -> ImageTower:
        return self.net.backbone.tower

    @property
    def encoder_frozen(self) -> bool:
        return self.backbone.frozen

    def freeze_encoder(self) -> None:
        """Freeze every encoder parameter and keep its BatchNorm statistics fixed (eval mode for good)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.backbone.frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True) -> MammoDetector:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        return self.net(images, targets)

    def describe_taps(self) -> list[dict[str, Any]]:
        """The tapped tower levels: index, module, channels, stride (for results and docs)."""
        return [{"index": t, "module": i["module"], "channels": int(i["num_chs"]), "stride": int(i["reduction"])}
                for t, i in zip(self.taps, self.backbone.info, strict=True)]

    def save(self, out_dir: str | Path, **extra: Any) -> Path:
        """Write ``detector.safetensors`` + ``detector.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, out / DETECTOR_WEIGHTS, metadata={"format": "pt"})
        meta = {"format": DETECTOR_FORMAT, "format_version": DETECTOR_VERSION, "detector": self.cfg.to_dict(),
                "model": self.clip_cfg.to_dict(), "taps": self.describe_taps(), "provenance": provenance(),
                "extra": json.loads(json.dumps(extra, default=str))}
        (out / DETECTOR_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out


# --- building ----------------------------------------------------------------------------------------


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"{path} is missing or empty: the checkpoint has no weights")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is damaged or truncated: {str(err).strip()[:160]}") from err


def load_image_tower(source: str | Path | MammoCLIP | ImageTower, init: str = "pretrained"
                     ) -> tuple[ImageTower, MammoClipCfg]:
    """The image tower (and the model config it belongs to) from any model source.

    Args:
        source: A registry name, a mammoclip checkpoint folder, an official ``.tar``, a model or a tower.
        init: ``pretrained`` (the source's weights; for a registry name its packaged pretrained
            weights), ``imagenet`` (the architecture's ImageNet/packaged weights) or ``random``.

    Raises:
        CheckpointError: a checkpoint without image-tower weights, or a detector checkpoint.
        ConfigError: an unknown name or init.
    """
    if init not in ("pretrained", "imagenet", "random"):
        raise ConfigError(f"init must be pretrained, imagenet or random, got {init!r}")
    if isinstance(source, ImageTower):
        raise ConfigError("pass the MammoCLIP model (its config is needed), not the bare ImageTower")
    if isinstance(source, MammoCLIP):
        cfg = source.cfg
        if init == "pretrained":
            # A copy: the detector freezes (or fine-tunes) its tower, and the caller's model must stay
            # as it was (a demo or a notebook goes on to use it for zero-shot or FActOR).
            return copy.deepcopy(source.image_tower), cfg
        return ImageTower(cfg.image, pretrained=init == "imagenet"), cfg
    path = Path(source)
    if not path.exists():
        cfg = resolve_config(str(source))
        return ImageTower(cfg.image, pretrained=init != "random"), cfg
    folder = path.parent if path.is_file() and path.suffix in (".json", ".safetensors") else path
    if (folder / DETECTOR_CONFIG).exists():
        raise CheckpointError(f"{folder} is a detector checkpoint: give it to `detect eval`/`detect predict`, "
                              "or train from the image-tower checkpoint it was built on")
    if folder.is_file():  # an official .tar: converted in memory
        model = load_checkpoint(folder)
        return load_image_tower(model, init)
    meta = read_checkpoint_config(folder)
    cfg = MammoClipCfg.from_dict(meta["model"])
    if init != "pretrained":
        return ImageTower(cfg.image, pretrained=init == "imagenet"), cfg
    weights = folder / "model.safetensors"
    state = {k.removeprefix("image_tower."): v for k, v in _read_weights(weights).items()
             if k.startswith("image_tower.")}
    if not state:
        raise CheckpointError(f"{weights} has no image tower (no 'image_tower.*' weights): not a Mammo-CLIP "
                              "image encoder checkpoint")
    tower = ImageTower(cfg.image, pretrained=False)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: image tower weights do not match {cfg.image.model_name}: "
                              f"{len(missing)} missing (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected")
    return tower, cfg


def build_detector(source: str | Path | MammoCLIP, cfg: DetectorCfg, init: str = "pretrained",
                   freeze_encoder: bool = False) -> MammoDetector:
    """A detector on the image tower of ``source`` (see :func:`load_image_tower`), heads freshly initialised."""
    tower, clip_cfg = load_image_tower(source, init)
    det = MammoDetector(tower, clip_cfg, cfg)
    if freeze_encoder:
        det.freeze_encoder()
    return det


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> MammoDetector:
    """Rebuild a detector from its checkpoint folder (strict), in eval mode."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    cfg_path = folder / DETECTOR_CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a detector checkpoint (no {DETECTOR_CONFIG}); "
                              "train one with `mammoclip detect train`")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = DetectorCfg.from_dict(meta["detector"])
        clip_cfg = MammoClipCfg.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{cfg_path} is not a valid detector config: {err}") from err
    det = MammoDetector(ImageTower(clip_cfg.image, pretrained=False), clip_cfg, cfg)
    state = _read_weights(folder / DETECTOR_WEIGHTS)
    missing, unexpected = det.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder / DETECTOR_WEIGHTS} does not match {cfg_path}: {len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys")
    return det.to(map_location).eval()


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
