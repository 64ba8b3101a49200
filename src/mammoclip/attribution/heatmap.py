"""Heatmaps and regions: from channel weights to a [0, 1] map on the processed and the original image.

For an image and an attribute a (docs/attribution.md):

1. every channel c of the encoder's last feature map is scored by ``cos(ê(c, a), t_a)``
   (:meth:`FactorMapper.similarities`);
2. the ``top_k`` best channels get weights ``softmax(cos / τ)`` (the others 0) and their ``(h, w)``
   maps are summed with those weights;
3. the ``(h, w)`` sum is upsampled bilinearly (``align_corners=False``: feature cell ``(i, j)`` covers
   ``[j W/w, (j+1) W/w) x [i H/h, (i+1) H/h)`` of the processed image, the continuous-pixel convention of
   docs/data.md §3) to the processed image and rescaled to [0, 1] (min -> 0, max -> 1);
4. with the manifest's transform record it is mapped back onto the original DICOM pixels
   (:meth:`TransformRecord.invert`: un-pad, un-scale, un-flip, un-crop; 0 outside the crop);
5. regions are the connected components of the pixels at or above the 95th percentile, each with
   its box and peak value, highest peak first.

The score shown with a heatmap is the image score the loss trains: ``max_c cos(ê(c, a), t_a)``.

Every localization method (FActOR and the baselines of :mod:`mammoclip.attribution.baselines`) is a
registered :data:`HeatmapMethod`, so the metrics and outputs treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mammoclip.attribution.mapper import FACTOR_TEMPERATURE, FactorMapper, tap_feature_map
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.breast import TransformRecord

#: Percentile of the heatmap above which pixels form regions (issue #36 of the original, docs/original.md §7).
REGION_PERCENTILE: float = 95.0
#: Channels whose maps are summed (the best-scoring ones).
DEFAULT_TOP_K: int = 32

#: ``(model, images (B, 1, H, W) normalised, context) -> (maps (B, A, h', w'), scores (B, A))``.
HeatmapMethod = Callable[[Any, torch.Tensor, "HeatmapContext"], tuple[torch.Tensor, torch.Tensor]]
_METHODS: dict[str, HeatmapMethod] = {}


def register_heatmap_method(name: str) -> Callable[[HeatmapMethod], HeatmapMethod]:
    """Register a localization method under ``name`` (``factor`` and the baselines)."""

    def wrap(fn: HeatmapMethod) -> HeatmapMethod:
        _METHODS[name] = fn
        return fn

    return wrap


def list_heatmap_methods() -> list[str]:
    return sorted(_METHODS)


def get_heatmap_method(name: str) -> HeatmapMethod:
    if name not in _METHODS:
        raise ConfigError(f"unknown heatmap method {name!r}; choose from {list_heatmap_methods()}")
    return _METHODS[name]


@dataclass
class HeatmapContext:
    """What a method may need besides the model and the images."""

    #: Attribute names, in output order.
    attributes: list[str]
    #: The trained mapper (``factor`` only).
    mapper: FactorMapper | None = None
    #: Channels summed by ``factor`` / ``top_channels``.
    top_k: int = DEFAULT_TOP_K
    #: Softmax temperature of the channel weights.
    temperature: float = FACTOR_TEMPERATURE
    #: Feature map ``top_channels`` reads (:func:`tap_feature_map`; ``factor`` reads its mapper's tap).
    tap: int | None = None
    #: ``attribute -> (weight (F,), bias)``: linear-probe heads on pooled features (``gradcam``).
    probe_heads: dict[str, tuple[torch.Tensor, float]] | None = None


def channel_weights(sim: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """``(B, C, A)`` similarities -> ``(B, C, A)`` weights: softmax(sim / τ) over the top-k channels, else 0."""
    k = min(top_k, sim.shape[1])
    top = sim.topk(k, dim=1)  # values/indices (B, k, A)
    w = torch.zeros_like(sim)
    return w.scatter(1, top.indices, torch.softmax(top.values / temperature, dim=1))


def weighted_maps(fmap: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` maps and ``(B, C, A)`` weights -> ``(B, A, h, w)`` weighted sums."""
    return torch.einsum("bchw,bca->bahw", fmap.float(), weights.float())


def upsample_normalise(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(B, A, h, w)`` -> ``(B, A, H, W)`` float32 in [0, 1]: bilinear, then per-map min-max (a flat map is 0)."""
    up = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)  # (B, A, H, W)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    return ((up - lo) / (hi - lo).clamp(min=1e-12)).cpu().numpy().astype(np.float32)


@register_heatmap_method("factor")
def factor_maps(model: Any, images: torch.Tensor, ctx: HeatmapContext) -> tuple[torch.Tensor, torch.Tensor]:
    """FActOR: mapper similarities -> top-k channel weights -> weighted sum of channel maps."""
    if ctx.mapper is None:
        raise ConfigError("the factor heatmap needs a trained mapper (--mapper)")
    idx = [ctx.mapper.names.index(a) for a in ctx.attributes]
    fmap = tap_feature_map(model, images, ctx.mapper.tap).float()  # (B, C, h, w)
    sim = ctx.mapper.similarities(fmap)[:, :, idx]  # (B, C, A)
    maps = weighted_maps(fmap, channel_weights(sim, ctx.top_k, ctx.temperature))  # (B, A, h, w)
    return maps, sim.amax(dim=1)  # (B, A)


class Explainer:
    """Heatmaps of one method for a list of attributes at the model's input size.

    Args:
        model: A MammoCLIP (eval mode is set for every call and restored after).
        method: A name from :func:`list_heatmap_methods`.
        ctx: The method's context.
    """

    def __init__(self, model: Any, method: str, ctx: HeatmapContext) -> None:
        self.model = model
        self.method_name = method
        self.method = get_heatmap_method(method)
        self.ctx = ctx
        if ctx.mapper is not None:
            unknown = [a for a in ctx.attributes if a not in ctx.mapper.names]
            if unknown:
                raise ConfigError(f"the mapper has no head for {unknown}; it was trained for {ctx.mapper.names}")
            size = tuple(model.preprocess_cfg.image_size)
            if size != ctx.mapper.image_size:
                raise ConfigError(
                    f"the mapper was trained at {ctx.mapper.image_size[0]}x{ctx.mapper.image_size[1]} but the model "
                    f"reads {size[0]}x{size[1]}; use the checkpoint (and image size) the mapper was trained with")

    def __call__(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(B, 1, H, W)`` normalised images -> ``(B, A, H', W')`` heatmaps in [0, 1] and ``(B, A)`` scores.

        ``out_size`` is the processed image's size when it differs from the model input (resized input).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            grad = self.method_name == "gradcam"
            with torch.set_grad_enabled(grad):
                maps, scores = self.method(self.model, images, self.ctx)
        finally:
            self.model.train(was_training)
        size = out_size or (int(images.shape[-2]), int(images.shape[-1]))
        return upsample_normalise(maps.detach(), size), scores.detach().float().cpu().numpy()


def check_input_size(image: np.ndarray, model: Any, source: str) -> None:
    """Fail on a single image whose size is not the model's (the mapper's heads fit one feature map)."""
    want = tuple(model.preprocess_cfg.image_size)
    if tuple(image.shape[:2]) != want:
        raise DataError(
            f"{source}: image is {image.shape[0]}x{image.shape[1]} (HxW) but the checkpoint and mapper were trained "
            f"at {want[0]}x{want[1]}; preprocess it to that size "
            f"(`mammoclip preprocess SOURCE --out DIR --size {want[0]}x{want[1]}`)")


def heatmap_to_original(heat: np.ndarray, record: TransformRecord) -> np.ndarray:
    """A processed-grid heatmap on the original DICOM grid (bilinear; 0 outside the breast crop)."""
    return record.invert(np.ascontiguousarray(heat, dtype=np.float32), interpolation="linear", fill=0.0)


def heat_regions(heat: np.ndarray, percentile: float = REGION_PERCENTILE) -> list[dict[str, float]]:
    """Connected components (8-connected) of ``heat >= percentile(heat)``, highest peak first.

    Returns:
        One dict per region: ``xmin, ymin, xmax, ymax`` (continuous pixel edges, ``xmax`` exclusive),
        ``peak``, ``peak_x``, ``peak_y`` (pixel centre of the maximum), ``area`` (pixels).
    """
    import cv2

    if not np.isfinite(heat).all() or heat.max() <= heat.min():
        return []
    binary = (heat >= np.percentile(heat, percentile)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        inside = labels[y:y + h, x:x + w] == k
        local = np.where(inside, heat[y:y + h, x:x + w], -np.inf)
        py, px = np.unravel_index(int(np.argmax(local)), local.shape)
        out.append({"xmin": float(x), "ymin": float(y), "xmax": float(x + w), "ymax": float(y + h),
                    "peak": float(local[py, px]), "peak_x": float(x + px + 0.5), "peak_y": float(y + py + 0.5),
                    "area": float(area)})
    return sorted(out, key=lambda r: -r["peak"])
