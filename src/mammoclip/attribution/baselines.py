"""Baselines that any localization claim must beat, computed like FActOR heatmaps (docs/attribution.md).

* ``top_channels``: the raw mean of the ``top_k`` channels with the highest mean activation, with no
  attribute at all: what the encoder finds salient (on the same feature tap as the mapper under test);
* ``breast_prior``: a Gaussian centred on the breast's centroid with the breast's spread, masked to
  the breast: a method that does not beat it is not localizing anything;
* ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017) of a linear-probe head (logistic regression
  on the frozen pooled features of the same encoder, fitted on the training split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mammoclip.attribution.attributes import AttributeSpec
from mammoclip.attribution.heatmap import HeatmapContext, register_heatmap_method
from mammoclip.attribution.mapper import tap_feature_map
from mammoclip.data.manifest import Bundle
from mammoclip.errors import DataError

#: Share of the normalised intensity range above the darkest pixel that counts as breast.
BREAST_THRESHOLD: float = 0.1


@register_heatmap_method("top_channels")
def top_channel_maps(model: Any, images: torch.Tensor, ctx: HeatmapContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the ``top_k`` most activated channels of the ``ctx.tap`` map (same for every attribute; score = 0)."""
    fmap = tap_feature_map(model, images, ctx.tap).float()  # (B, C, h, w)
    k = min(ctx.top_k, fmap.shape[1])
    top = fmap.mean(dim=(2, 3)).topk(k, dim=1).indices  # (B, k)
    picked = torch.gather(fmap, 1, top[:, :, None, None].expand(-1, -1, *fmap.shape[2:]))  # (B, k, h, w)
    maps = picked.mean(dim=1, keepdim=True).expand(-1, len(ctx.attributes), -1, -1)  # (B, A, h, w)
    return maps, torch.zeros(fmap.shape[0], len(ctx.attributes))


def breast_prior_map(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` prior: Gaussian at the breast centroid with the breast's per-axis spread, 0 off the breast."""
    lo, hi = float(image.min()), float(image.max())
    breast = image > lo + BREAST_THRESHOLD * (hi - lo)
    if not breast.any():
        breast = np.ones_like(breast)
    ys, xs = np.nonzero(breast)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    sy, sx = max(ys.std(), 1.0), max(xs.std(), 1.0)
    gy = (np.arange(image.shape[0]) + 0.5 - cy) / sy
    gx = (np.arange(image.shape[1]) + 0.5 - cx) / sx
    return np.exp(-0.5 * (gy[:, None] ** 2 + gx[None, :] ** 2)) * breast  # (H, W)


@register_heatmap_method("breast_prior")
def breast_prior_maps(model: Any, images: torch.Tensor, ctx: HeatmapContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre-of-breast prior at full resolution (the image alone; the model is not used)."""
    arr = images[:, 0].float().cpu().numpy()  # (B, H, W)
    maps = torch.from_numpy(np.stack([breast_prior_map(a) for a in arr]).astype(np.float32))  # (B, H, W)
    return maps[:, None].expand(-1, len(ctx.attributes), -1, -1), torch.zeros(len(arr), len(ctx.attributes))


@register_heatmap_method("gradcam")
def gradcam_maps(model: Any, images: torch.Tensor, ctx: HeatmapContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of each attribute's linear-probe logit w.r.t. the last feature map (eval mode, no dropout)."""
    if not ctx.probe_heads:
        raise DataError("gradcam needs linear-probe heads (fit_probe_heads on a split with both classes)")
    fmap = model.image_feature_map(images).float().detach().requires_grad_(True)  # (B, C, h, w)
    pooled = model.image_tower.forward_head(fmap)  # (B, C)
    maps, scores = [], []
    for name in ctx.attributes:
        w, b = ctx.probe_heads[name]
        logit = pooled @ w.to(pooled) + b  # (B,)
        (grad,) = torch.autograd.grad(logit.sum(), fmap, retain_graph=True)  # (B, C, h, w)
        alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        maps.append(torch.relu((alpha * fmap).sum(dim=1)).detach())  # (B, h, w)
        scores.append(torch.sigmoid(logit).detach())
    return torch.stack(maps, dim=1), torch.stack(scores, dim=1)  # (B, A, h, w), (B, A)


def fit_probe_heads(model: Any, bundle: Bundle, attributes: Sequence[AttributeSpec], *, batch_size: int = 16,
                    num_workers: int = 0, seed: int = 0) -> dict[str, tuple[torch.Tensor, float]]:
    """Logistic-regression heads on frozen pooled features, folded into one ``(w, b)`` per attribute.

    The standardisation of the features is folded into the weights, so the head is linear in the
    pooled features and Grad-CAM differentiates the same function the probe scores.
    """
    from sklearn.linear_model import LogisticRegression

    from mammoclip.evaluate.features import extract_features

    feats = extract_features(model, bundle, batch_size=batch_size, num_workers=num_workers)["pooled"]
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    heads = {}
    for spec in attributes:
        if spec.label_column not in bundle.images.columns:
            raise DataError(f"manifest has no column {spec.label_column!r} for attribute {spec.name!r}")
        y = bundle.images[spec.label_column].to_numpy(dtype=float)
        known = np.isfinite(y)
        if len(np.unique(y[known])) < 2:
            raise DataError(f"attribute {spec.name!r}: the probe split needs both positive and negative images")
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit((feats[known] - mu) / sd, y[known].astype(int))
        w = clf.coef_[0] / sd
        b = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
        heads[spec.name] = (torch.from_numpy(w.astype(np.float32)), b)
    return heads
