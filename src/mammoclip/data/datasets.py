"""torch Datasets over a manifest bundle.

Items are dicts; images are returned as stored (uint8/uint16, ``(1, H, W)``) and normalised on the
device by :func:`mammoclip.data.transforms.normalize_images`.

(Extended by the training layer with the image-text pair and image-label datasets.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mammoclip.data.imageio import read_image
from mammoclip.data.manifest import Bundle


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``size`` = (height, width) with area interpolation (no-op when equal)."""
    import cv2

    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8/uint16 array -> ``(1, H, W)`` tensor of the same dtype (no copy to float)."""
    return torch.from_numpy(np.ascontiguousarray(image))[None]


class ImageDataset(Dataset):
    """One item per manifest row: ``{"image": (1, H, W) uint, "index": int}``.

    Used for inference (zero-shot, embeddings, probe features). Images whose size differs from
    ``image_size`` are resized with area interpolation.
    """

    def __init__(self, bundle: Bundle, image_size: tuple[int, int] | None = None) -> None:
        self.bundle = bundle
        self.paths = [bundle.abspath(p) for p in bundle.images["path"].astype(str)]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = read_image(self.paths[index])
        if self.image_size is not None:
            image = resize_to(image, self.image_size)
        return {"image": to_tensor(image), "index": index}
