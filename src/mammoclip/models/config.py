"""Typed configuration of models and of the image preprocessing they expect.

A model config is data (JSON in ``model_configs/``, see :mod:`mammoclip.models.registry`) turned into
these dataclasses, the way open_clip turns ``model_configs/*.json`` into ``CLIPVisionCfg``/``CLIPTextCfg``.
The same dictionaries are written into every checkpoint's ``config.json``, so a checkpoint rebuilds its
model without the registry and without network access.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mammoclip.constants import (
    INIT_TEMPERATURE,
    PAPER_EMBED_DIM,
    PAPER_IMAGE_SIZE,
    PAPER_PIXEL_MEAN,
    PAPER_PIXEL_STD,
    TEXT_MAX_LENGTH,
)
from mammoclip.errors import ConfigError


@dataclass
class PreprocessCfg:
    """How raw uint8/uint16 pixels become the model's input tensor (stored in every checkpoint)."""

    #: Input (height, width) in pixels.
    image_size: tuple[int, int] = PAPER_IMAGE_SIZE
    #: Scalar mean/std applied after scaling to [0, 1] (the paper uses one value for all channels).
    mean: float = PAPER_PIXEL_MEAN
    std: float = PAPER_PIXEL_STD
    #: "minmax": per-image min-max to [0, 1] (the paper); "range": divide by the dtype's maximum.
    scaling: str = "minmax"
    #: How the images on disk were made ("paper" = docs/original.md §1, or our pipeline's settings).
    resize: str = "stretch"

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if min(self.image_size) < 32:
            raise ValueError(f"image_size too small: {self.image_size}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.scaling not in ("minmax", "range"):
            raise ValueError(f"scaling must be 'minmax' or 'range', got {self.scaling!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


@dataclass
class ImageTowerCfg:
    """A timm CNN trunk, a pooling and a dropout (docs/original.md §3 "Image encoders")."""

    #: timm architecture name (any timm model that has ``forward_features``).
    model_name: str = "tf_efficientnet_b5"
    #: Pretrained source (see :mod:`mammoclip.models.pretrained`): None = random,
    #: "timm" / "timm:NAME.TAG" = timm's pretrained weights (hub, needs network), "package:NAME",
    #: or a local state-dict file.
    pretrained: str | None = None
    #: Layout of a pretrained state-dict file: "timm" (our names) or "lukemelas" (efficientnet_pytorch).
    pretrained_format: str = "timm"
    #: 3 = grayscale inputs are replicated to RGB; 1 = the first conv is folded (weights summed).
    in_chans: int = 3
    #: Pooling of the final feature map, by registered name ("avg", "gem").
    pool: str = "avg"
    #: Dropout after pooling; 0.4 for B5, 0.3 for B2 in the paper (lukemelas ``_dropout``).
    dropout: float = 0.0
    #: Stochastic depth; lukemelas uses drop-connect 0.2 scaled by block index.
    drop_path_rate: float = 0.0
    #: If set, TF "SAME" padding is frozen for this nominal square size, as lukemelas'
    #: ``Conv2dStaticSamePadding`` does (456 for B5, 260 for B2); None keeps timm's behaviour.
    static_same_size: int | None = None
    #: BatchNorm momentum override (lukemelas: 0.01); None keeps timm's default.
    bn_momentum: float | None = None
    #: Extra keyword arguments for ``timm.create_model`` (e.g. width multipliers for tiny models).
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ConfigError(f"image.in_chans must be 1 or 3, got {self.in_chans}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"image.dropout must be in [0, 1), got {self.dropout}")
        if self.pretrained_format not in ("timm", "lukemelas"):
            raise ConfigError(f"image.pretrained_format must be 'timm' or 'lukemelas', got {self.pretrained_format!r}")


@dataclass
class TextTowerCfg:
    """A transformers encoder, a pooling and a tokenizer reference (docs/original.md §3 "Text encoder")."""

    #: Pretrained source of the weights: hub name, local directory, "package:NAME", or None (random).
    pretrained: str | None = None
    #: Architecture as a transformers config dict (``model_type`` + fields). Used to build the tower
    #: without any file when ``pretrained`` is None; filled from the loaded model otherwise, so that a
    #: checkpoint always rebuilds offline.
    hf_config: dict[str, Any] = field(default_factory=dict)
    #: Tokenizer source (hub name, local directory, "package:NAME"); defaults to ``pretrained``.
    tokenizer: str | None = None
    #: Token pooling by registered name: "eos" (final [SEP], the paper), "cls", "mean".
    pooling: str = "eos"
    #: Maximum token length (docs/original.md §2.4).
    max_length: int = TEXT_MAX_LENGTH
    #: Freeze the embeddings and this many lower encoder layers (0 = all trainable, the paper).
    freeze_layers: int = 0

    def __post_init__(self) -> None:
        if self.pretrained is None and not self.hf_config:
            raise ConfigError("text: give either a pretrained source or an hf_config to build a random tower")
        if self.max_length < 8:
            raise ConfigError(f"text.max_length too small: {self.max_length}")
        if self.tokenizer is None:
            self.tokenizer = self.pretrained


@dataclass
class MammoClipCfg:
    """A whole Mammo-CLIP model: two towers, linear projections, a learnable temperature."""

    #: Registry name (informational; stored in checkpoints).
    name: str = "custom"
    #: Joint embedding dimension of both linear projections (512 in the paper).
    embed_dim: int = PAPER_EMBED_DIM
    #: Initial temperature; logit_scale starts at ln(1 / init_temperature) (docs/original.md §3).
    init_temperature: float = INIT_TEMPERATURE
    image: ImageTowerCfg = field(default_factory=ImageTowerCfg)
    text: TextTowerCfg = field(default_factory=lambda: TextTowerCfg(pretrained="emilyalsentzer/Bio_ClinicalBERT"))
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    #: One-line description shown by ``mammoclip models list``.
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.image, dict):
            self.image = ImageTowerCfg(**self.image)
        if isinstance(self.text, dict):
            self.text = TextTowerCfg(**self.text)
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessCfg(**self.preprocess)
        if self.embed_dim < 1:
            raise ConfigError(f"embed_dim must be positive, got {self.embed_dim}")
        if not 0.0 < self.init_temperature < 1.0:
            raise ConfigError(f"init_temperature must be in (0, 1), got {self.init_temperature}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MammoClipCfg:
        """Build from a JSON-style dict, naming unknown keys in the error."""
        known = {"name", "embed_dim", "init_temperature", "image", "text", "preprocess", "description"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {unknown}")
        try:
            return cls(**d)
        except TypeError as err:
            raise ConfigError(f"invalid model config: {err}") from err
        except ValueError as err:
            raise ConfigError(f"invalid model config: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d
