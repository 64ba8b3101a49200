"""Typed configuration of models and of the image preprocessing they expect.

(Extended by the model layer: image tower, text tower, projection and CLIP configs live here too.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mammoclip.constants import PAPER_IMAGE_SIZE, PAPER_PIXEL_MEAN, PAPER_PIXEL_STD


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
    #: How the images on disk were made ("paper" = official-spec §1, or our pipeline's settings).
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
