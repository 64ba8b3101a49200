"""Image transforms: small array/tensor functions, composed, with explicit randomness.

(Extended by the training layer with the seeded train-time augmentations.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mammoclip.models.config import PreprocessCfg


def normalize_images(images: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    """Turn stored pixels into the model's input, on whatever device ``images`` lives.

    Datasets return uint8/uint16 tensors (4x less host memory and PCIe traffic than float32);
    this runs on the device, once per batch.

    Args:
        images: ``(B, C, H, W)`` integer or float tensor of stored pixel values.
        cfg: The model's preprocessing config.

    Returns:
        ``(B, C, H, W)`` float32 tensor: scaled to [0, 1] (per-image min-max, or by the dtype's
        range), then ``(x - mean) / std``.
    """
    if images.dtype == torch.uint16:
        # few kernels support uint16 on all devices: go through int32 (no wrap-around).
        x = images.to(torch.int32).float()
    else:
        x = images.float()
    if cfg.scaling == "minmax":
        flat = x.flatten(1)  # (B, C*H*W)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    else:
        top = 65535.0 if images.dtype in (torch.uint16, torch.int32) else 255.0
        x = x / top
    return (x - cfg.mean) / cfg.std


# --------------------------------------------------------------------- train-time augmentation ---
# Small array transforms with explicit randomness (docs/architecture.md, design rule 6): each samples its parameters
# from a ``numpy.random.Generator`` the caller passes, so an item's augmentation depends only on the
# seed the dataset derives from (base seed, epoch, index), never on worker count or order.
# The paper's set (docs/original.md §5) is flips + Affine + Elastic. The original's albumentations
# 1.4.7 read its scalar Affine arguments as *constants* (always +20° rotation, +20° shear, +10%
# shift); here they are symmetric ranges, which is what was intended.


class ArrayTransform:
    """Base: ``t(image, rng) -> image`` on a 2-D uint8/uint16 array (dtype and shape kept).

    Subclasses implement :meth:`sample` (draw parameters) and :meth:`apply` (use them), so that a
    dict wrapper can apply one draw to several arrays (an image and its mask).
    """

    #: Probability of applying the transform.
    p: float = 1.0

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict | None:
        """Draw parameters for an image of ``shape``; None = skip this time."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, params: dict, nearest: bool = False) -> np.ndarray:
        """Apply drawn parameters (``nearest`` interpolation for label masks)."""
        raise NotImplementedError

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        params = self.sample(rng, image.shape[:2])
        return image if params is None else self.apply(image, params)


class RandomFlip(ArrayTransform):
    """Horizontal and/or vertical flip, each with its own probability."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.5) -> None:
        self.horizontal = horizontal
        self.vertical = vertical

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict | None:
        h, v = rng.random() < self.horizontal, rng.random() < self.vertical
        return {"h": h, "v": v} if (h or v) else None

    def apply(self, image: np.ndarray, params: dict, nearest: bool = False) -> np.ndarray:
        if params["h"]:
            image = image[:, ::-1]
        if params["v"]:
            image = image[::-1]
        return np.ascontiguousarray(image)


class RandomAffine(ArrayTransform):
    """Rotation, shift, zoom and shear about the image centre, each drawn from a symmetric range.

    Args:
        rotate: Degrees; angle ~ U(-rotate, rotate).
        translate: Fraction of the size; shift ~ U(-translate, translate) per axis.
        scale: Zoom range (lo, hi).
        shear: Degrees; x and y shear ~ U(-shear, shear).
        p: Probability of applying.
    """

    def __init__(self, rotate: float = 20.0, translate: float = 0.1, scale: tuple[float, float] = (0.8, 1.2),
                 shear: float = 20.0, p: float = 0.5) -> None:
        self.rotate, self.translate, self.scale, self.shear, self.p = rotate, translate, scale, shear, p

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict | None:
        if rng.random() >= self.p:
            return None
        h, w = shape
        angle = np.deg2rad(rng.uniform(-self.rotate, self.rotate))
        sx, sy = np.tan(np.deg2rad(rng.uniform(-self.shear, self.shear, size=2)))
        zoom = rng.uniform(*self.scale)
        tx, ty = rng.uniform(-self.translate, self.translate, size=2) * (w, h)
        c, s = np.cos(angle), np.sin(angle)
        linear = zoom * np.array([[c, -s], [s, c]]) @ np.array([[1.0, sx], [sy, 1.0]])  # (2, 2)
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        offset = centre + (tx, ty) - linear @ centre
        return {"matrix": np.hstack([linear, offset[:, None]])}  # (2, 3)

    def apply(self, image: np.ndarray, params: dict, nearest: bool = False) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        flag = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.warpAffine(image, params["matrix"], (w, h), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class RandomElastic(ArrayTransform):
    """Elastic deformation (Simard et al. 2003): a smoothed random field of pixel displacements.

    Args:
        alpha: Displacement magnitude in pixels.
        sigma: Gaussian smoothing of the field in pixels.
        p: Probability of applying.
    """

    def __init__(self, alpha: float = 10.0, sigma: float = 15.0, p: float = 0.5) -> None:
        self.alpha, self.sigma, self.p = alpha, sigma, p

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict | None:
        if rng.random() >= self.p:
            return None
        import cv2

        fields = []
        for _ in range(2):
            noise = rng.uniform(-1, 1, size=shape).astype(np.float32)  # (H, W)
            fields.append(cv2.GaussianBlur(noise, (0, 0), self.sigma) * self.alpha)
        return {"dx": fields[0], "dy": fields[1]}

    def apply(self, image: np.ndarray, params: dict, nearest: bool = False) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))  # (H, W)
        flag = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.remap(image, xs + params["dx"], ys + params["dy"], flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class Compose(ArrayTransform):
    """Apply transforms in order, each with its own draw from the same generator."""

    def __init__(self, transforms: list[ArrayTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            image = t(image, rng)
        return image


class Keyed:
    """Dict wrapper: one parameter draw applied to several keys (an image and its masks).

    Args:
        transform: An :class:`ArrayTransform` (a :class:`Compose` is applied member by member).
        keys: Keys to transform with the same draw.
        nearest_keys: Keys resampled with nearest-neighbour interpolation (label masks).
    """

    def __init__(self, transform: ArrayTransform, keys: tuple[str, ...] = ("image",),
                 nearest_keys: tuple[str, ...] = ()) -> None:
        self.transform, self.keys, self.nearest_keys = transform, keys, nearest_keys

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        out = dict(item)
        members = self.transform.transforms if isinstance(self.transform, Compose) else [self.transform]
        shape = out[self.keys[0]].shape[:2]
        for t in members:
            params = t.sample(rng, shape)
            if params is None:
                continue
            for k in self.keys:
                out[k] = t.apply(out[k], params, nearest=k in self.nearest_keys)
        return out


#: Augmentation presets by name (``data.augment`` in a run config).
AUGMENTATIONS: dict[str, Callable[[], ArrayTransform | None]] = {
    # docs/original.md §5 (flips p 0.5, Affine p 0.5 with ranges, Elastic p 0.5 alpha 10 sigma 15).
    "paper": lambda: Compose([RandomFlip(0.5, 0.5), RandomAffine(20, 0.1, (0.8, 1.2), 20, p=0.5),
                              RandomElastic(10, 15, p=0.5)]),
    # cheaper, milder set for small CPU runs.
    "light": lambda: Compose([RandomFlip(0.5, 0.0), RandomAffine(10, 0.05, (0.9, 1.1), 5, p=0.5)]),
    "none": lambda: None,
}


def build_augmentation(name: str) -> ArrayTransform | None:
    """A train-time augmentation preset from :data:`AUGMENTATIONS` (None for ``"none"``)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]()
