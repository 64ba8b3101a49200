"""Typed configuration of a detector and of a detection run, and the registry of detectable classes.

A detector class names a *set* of ``boxes.csv`` labels, because sources spell findings differently
(the synthetic cohort and CBIS-DDSM write ``mass``/``calcification``, VinDr-Mammo writes ``Mass`` and
``Suspicious Calcification``). Benign calcifications of the synthetic cohort are not targets, as the
original detects VinDr's *suspicious* calcifications only (docs/original.md §6.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mammoclip.errors import ConfigError

#: Detector class -> the ``boxes.csv`` labels that count as that class.
_CLASSES: dict[str, frozenset[str]] = {}


def register_detect_class(name: str, labels: tuple[str, ...] | list[str]) -> None:
    """Register (or replace) a detectable class and the box labels it covers."""
    _CLASSES[name] = frozenset(labels)


def list_detect_classes() -> list[str]:
    return sorted(_CLASSES)


def class_labels(name: str) -> frozenset[str]:
    """The box labels of a registered class; an unknown name lists the known ones."""
    if name not in _CLASSES:
        raise ConfigError(f"unknown detection class {name!r}; known: {list_detect_classes()}")
    return _CLASSES[name]


register_detect_class("mass", ("mass", "Mass"))
register_detect_class("calcification", ("calcification", "Suspicious Calcification"))

#: What ``init`` may be: the checkpoint's own weights, the base architecture's ImageNet weights, none.
INITS: tuple[str, ...] = ("pretrained", "imagenet", "random")
#: Box-safe augmentation presets (see :mod:`mammoclip.detect.data`).
DETECT_AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "light")


@dataclass
class DetectorCfg:
    """The RetinaNet on top of an image tower (stored with every detector checkpoint)."""

    #: Detected classes, by registered name (:func:`list_detect_classes`); label ``k`` is ``classes[k]``.
    classes: list[str] = field(default_factory=lambda: ["mass"])
    #: Network input (height, width); images of another size are resized (boxes follow). The original
    #: squashes to 512x512; the preprocessed aspect ratio (e.g. 1520x912) avoids the distortion.
    image_size: tuple[int, int] = (1520, 912)
    #: Tower levels fed to the FPN, as indices into the trunk's ``feature_info`` (None: the last three,
    #: strides 8/16/32 for every EfficientNet; see docs/detection.md "Taps").
    taps: list[int] | None = None
    #: FPN width (channels of every pyramid level and of the heads).
    fpn_channels: int = 256
    #: Anchor base size as a multiple of the level's stride (RetinaNet: 4, i.e. 32 px at stride 8).
    anchor_scale: float = 4.0
    #: Focal loss alpha and gamma (Lin et al. 2017; the original's scripts: 0.25 and 2).
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    #: Anchors scoring below this are dropped before NMS (the original: 0.05).
    score_thresh: float = 0.05
    #: IoU of per-class non-maximum suppression.
    nms_thresh: float = 0.5
    #: Detections kept per image after NMS.
    max_detections: int = 100

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if not self.classes:
            raise ConfigError("detector needs at least one class")
        for name in self.classes:
            class_labels(name)
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"detector classes repeat: {self.classes}")
        if min(self.image_size) < 32:
            raise ConfigError(f"detector image_size too small: {self.image_size}")
        if self.taps is not None and len(self.taps) < 1:
            raise ConfigError("detector taps must name at least one level")
        if not 0.0 <= self.focal_alpha <= 1.0 or self.focal_gamma < 0:
            raise ConfigError(f"focal alpha must be in [0, 1] and gamma >= 0, got {self.focal_alpha}, {self.focal_gamma}")
        if not 0.0 <= self.score_thresh < 1.0 or not 0.0 < self.nms_thresh <= 1.0:
            raise ConfigError(f"score_thresh must be in [0, 1) and nms_thresh in (0, 1], got "
                              f"{self.score_thresh}, {self.nms_thresh}")
        if self.max_detections < 1 or self.fpn_channels < 1 or self.anchor_scale <= 0:
            raise ConfigError("max_detections, fpn_channels and anchor_scale must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorCfg:
        return cls(**_known(cls, d, "detector"))


@dataclass
class DetectTrainCfg:
    """One detection training run (``mammoclip detect train``; YAML section ``train``)."""

    #: Image tower source: a registry name, a mammoclip checkpoint folder or an official ``.tar``.
    checkpoint: str = "mammoclip-lite"
    #: ``pretrained`` (the checkpoint's weights), ``imagenet`` (the base architecture's), ``random``.
    init: str = "pretrained"
    #: True: encoder parameters frozen and kept in eval mode (BN statistics frozen too); False: fine-tune.
    freeze_encoder: bool = True
    #: Share of the training patients used (drawn by patient, stratified on having a box).
    label_fraction: float = 1.0
    #: Seed of the label fraction, the head initialisation, the data order and the augmentation.
    seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    #: AdamW learning rate of the FPN and heads; the encoder (when fine-tuned) gets ``lr * encoder_lr_mult``.
    lr: float = 1e-4
    encoder_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    #: Gradient-norm clipping (0: off); the original clips at 0.1.
    grad_clip: float = 1.0
    #: Box-safe augmentation preset: none, flip, light (flip + small affine).
    augment: str = "light"
    #: Evaluate on the validation split every this many epochs (and after the last).
    eval_every: int = 1
    #: DataLoader worker processes (0: in the main process).
    workers: int = 0
    #: torch device; None = cuda when available, else cpu.
    device: str | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.augment not in DETECT_AUGMENTATIONS:
            raise ConfigError(f"augment must be one of {list(DETECT_AUGMENTATIONS)}, got {self.augment!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if min(self.epochs, self.batch_size, self.eval_every) < 1 or self.lr <= 0 or self.workers < 0:
            raise ConfigError("epochs, batch_size, eval_every and lr must be positive, workers >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known(cls: type, d: dict[str, Any], section: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {unknown}; known: {sorted(names)}")
    return dict(d)


def load_detect_config(path: str | Path | None, **overrides: Any) -> tuple[DetectorCfg, DetectTrainCfg]:
    """Read a detection YAML (sections ``detector`` and ``train``) and apply keyword overrides.

    Overrides are ``section__field=value`` (``detector__image_size=(512, 512)``); None values are
    ignored, so a CLI can pass every option it has.
    """
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{p}: cannot read detection config: {err}") from err
        if not isinstance(raw, dict) or set(raw) - {"detector", "train"}:
            raise ConfigError(f"{p}: a detection config has the sections 'detector' and 'train' only")
    det = dict(raw.get("detector") or {})
    run = dict(raw.get("train") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        (det if section == "detector" else run)[name] = value
    return DetectorCfg.from_dict(det), DetectTrainCfg(**_known(DetectTrainCfg, run, "train"))
