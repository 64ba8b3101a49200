"""Image transforms: small array/tensor functions, composed, with explicit randomness.

(Extended by the training layer with the seeded train-time augmentations.)
"""

from __future__ import annotations

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
