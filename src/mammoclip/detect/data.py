"""Detection data: the manifest's boxes per class, a dataset, and augmentations that move boxes too.

Coordinates are the manifest's continuous pixel coordinates (docs/data.md §3): pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``. Three grids appear:

* **original**: the source DICOM (``space == "original"`` rows of ``boxes.csv``);
* **processed**: the image file at ``path`` (``space == "processed"``, what preprocessing writes);
* **input**: the network input, the processed image resized to ``DetectorCfg.image_size``.

Original -> processed goes through the manifest's transform record
(:class:`mammoclip.imaging.breast.TransformRecord`); processed -> input is a per-axis scale.
Boxes partly outside the image are clipped to it; boxes left narrower or lower than
:data:`MIN_BOX_SIDE` are dropped, and the number dropped is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mammoclip.data.datasets import item_rng, resize_to, to_tensor
from mammoclip.data.manifest import TRANSFORM_COLUMNS, Bundle
from mammoclip.data.transforms import ArrayTransform, RandomAffine, RandomFlip
from mammoclip.detect.config import class_labels
from mammoclip.errors import DataError
from mammoclip.imaging.breast import TransformRecord
from mammoclip.imaging.imageio import read_image

log = logging.getLogger(__name__)
#: Box-cleaning notes already logged in this process (source, rows, counts).
_NOTED: set[tuple[str, int, int, int]] = set()

#: A box must keep at least this many pixels of width and height (after clipping) to be a target.
MIN_BOX_SIDE: float = 1.0

#: Box-safe augmentation presets: only transforms whose effect on a box is exact (flip) or bounded
#: (affine: the box of the moved corners). Elastic deformation has no box rule and is not offered.
BOX_AUGMENTATIONS: dict[str, Callable[[], list[ArrayTransform]]] = {
    "none": lambda: [],
    "flip": lambda: [RandomFlip(0.5, 0.0)],
    "light": lambda: [RandomFlip(0.5, 0.0), RandomAffine(10, 0.05, (0.9, 1.1), 5, p=0.5)],
}


@dataclass
class BoxStats:
    """What happened to the manifest's boxes on the way to targets."""

    kept: int = 0
    clipped: int = 0
    dropped_degenerate: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip ``(N, 4)`` boxes to ``[0, width] x [0, height]``; drop those thinner than :data:`MIN_BOX_SIDE`.

    Returns:
        The kept boxes, the ``(N,)`` keep mask and how many boxes the clipping changed.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    changed = int((np.abs(clipped - boxes) > 1e-9).any(axis=1).sum())
    keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIDE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIDE)
    return clipped[keep], keep, changed


def _image_size(bundle: Bundle, row: pd.Series) -> tuple[int, int]:
    """(height, width) of the processed image: from the manifest when recorded, else the file header."""
    h, w = row.get("height"), row.get("width")
    if h is not None and w is not None and not pd.isna(h) and not pd.isna(w):
        return int(h), int(w)
    from PIL import Image

    with Image.open(bundle.abspath(str(row["path"]))) as img:
        return img.size[1], img.size[0]


def gather_boxes(bundle: Bundle, classes: list[str], *, require: bool = True
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], BoxStats]:
    """Every image's target boxes in processed-image pixels, with class indices into ``classes``.

    Args:
        bundle: The manifest bundle (``boxes.csv`` in ``original`` or ``processed`` space).
        classes: Registered class names; box label ``l`` belongs to class ``k`` when
            ``l in class_labels(classes[k])``.
        require: Fail when a class has no box at all (training); evaluation of a bundle without
            findings passes ``False``.

    Returns:
        ``{image_id: (boxes (N, 4), labels (N,))}`` for every image of the manifest (empty arrays for
        images without findings: they are background), and the counts.

    Raises:
        DataError: a class without boxes (``require``), or ``original`` boxes without a transform record.
    """
    source = bundle.root / "boxes.csv"
    label_to_class: dict[str, int] = {}
    for k, name in enumerate(classes):
        for lab in class_labels(name):
            label_to_class[lab] = k
    boxes = bundle.boxes[bundle.boxes["label"].astype(str).isin(set(label_to_class))]
    ids = set(bundle.images["image_id"].astype(str))
    boxes = boxes[boxes["image_id"].astype(str).isin(ids)]
    stats = BoxStats()
    if require:
        present = set(boxes["label"].astype(str))
        for name in classes:
            if not present & class_labels(name):
                here = sorted(set(bundle.boxes[bundle.boxes["image_id"].astype(str).isin(ids)]["label"].astype(str)))
                raise DataError(
                    f"{source}: no boxes for class {name!r} (labels {sorted(class_labels(name))}) in the "
                    f"{len(ids)} images used; labels present there: {here}")
    by_image = {iid: group for iid, group in boxes.groupby(boxes["image_id"].astype(str))}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    has_record = set(TRANSFORM_COLUMNS) <= set(bundle.images.columns)
    for _, row in bundle.images.iterrows():
        iid = str(row["image_id"])
        group = by_image.get(iid)
        if group is None or len(group) == 0:
            out[iid] = (np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
            continue
        coords = group[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=np.float64)
        original = (group["space"].astype(str) == "original").to_numpy()
        if original.any():
            if not has_record or pd.isna(row.get("crop_x0")):
                raise DataError(f"{source}: image {iid!r} has boxes in original space but the manifest has no "
                                "transform record for it; run `mammoclip preprocess` first")
            coords[original] = TransformRecord.from_row(row).map_boxes(coords[original])
        labels = np.array([label_to_class[str(lab)] for lab in group["label"]], dtype=np.int64)
        height, width = _image_size(bundle, row)
        kept, keep, changed = clip_boxes(coords, height, width)
        stats.clipped += changed
        stats.dropped_degenerate += int((~keep).sum())
        stats.kept += len(kept)
        out[iid] = (kept, labels[keep])
        for k in labels[keep]:
            stats.per_class[classes[int(k)]] = stats.per_class.get(classes[int(k)], 0) + 1
    note = (str(source), hash(tuple(bundle.images["image_id"].astype(str))), stats.clipped, stats.dropped_degenerate)
    if (stats.dropped_degenerate or stats.clipped) and note not in _NOTED:
        # once per table and rows: a training run gathers the validation boxes every epoch
        _NOTED.add(note)
        log.warning("%s: %d box(es) clipped to the image, %d degenerate box(es) dropped",
                    source, stats.clipped, stats.dropped_degenerate)
    return out, stats


# --- geometry of the box-safe augmentations -------------------------------------------------------


def flip_boxes(boxes: np.ndarray, width: float, height: float, horizontal: bool, vertical: bool) -> np.ndarray:
    """Boxes of an image flipped horizontally and/or vertically (continuous coordinates)."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if horizontal:
        out[:, [0, 2]] = width - out[:, [2, 0]]
    if vertical:
        out[:, [1, 3]] = height - out[:, [3, 1]]
    return out


def affine_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The axis-aligned box around each box's four corners moved by an OpenCV ``warpAffine`` matrix.

    OpenCV's matrix acts on pixel *indices* (pixel centres at integers); a continuous coordinate
    ``c`` is index ``c - 0.5``, hence the half-pixel shifts.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1),
                        np.stack([x1, y1], 1)], axis=1) - 0.5  # (N, 4 corners, 2)
    moved = corners @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2] + 0.5  # (N, 4, 2)
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


def augment_with_boxes(image: np.ndarray, boxes: np.ndarray, transforms: list[ArrayTransform],
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transforms`` (flips, affines) to an image and move its boxes with the same draw.

    Boxes are not clipped here (see :func:`clip_boxes`).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for t in transforms:
        params = t.sample(rng, image.shape[:2])
        if params is None:
            continue
        h, w = image.shape[:2]
        image = t.apply(image, params)
        if isinstance(t, RandomFlip):
            boxes = flip_boxes(boxes, w, h, bool(params["h"]), bool(params["v"]))
        elif isinstance(t, RandomAffine):
            boxes = affine_boxes(boxes, params["matrix"])
        else:
            raise DataError(f"augmentation {type(t).__name__} has no rule for boxes")
    return image, boxes


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Boxes of an image resized by ``sx`` horizontally and ``sy`` vertically."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


class DetectionDataset(Dataset):
    """One item per manifest row: the image at the detector's input size and its targets.

    Items: ``{"image": (1, H, W) uint tensor, "boxes": (N, 4) float32 in input pixels, "labels": (N,)
    int64, "index": int}``. With ``augment``, each item's draw comes from ``(seed, epoch, index)``.
    """

    def __init__(self, bundle: Bundle, targets: dict[str, tuple[np.ndarray, np.ndarray]],
                 image_size: tuple[int, int], augment: str = "none", seed: int = 0) -> None:
        if augment not in BOX_AUGMENTATIONS:
            raise DataError(f"unknown box augmentation {augment!r}; known: {sorted(BOX_AUGMENTATIONS)}")
        self.bundle = bundle
        self.ids = bundle.images["image_id"].astype(str).tolist()
        self.paths = [bundle.abspath(p) for p in bundle.images["path"].astype(str)]
        self.targets = targets
        self.image_size = image_size
        self.transforms = BOX_AUGMENTATIONS[augment]()
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_image(self.paths[index])
        h0, w0 = image.shape[:2]
        boxes, labels = self.targets.get(self.ids[index], (np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
        height, width = self.image_size
        image = resize_to(image, self.image_size)
        boxes = scale_boxes(boxes, width / w0, height / h0)
        if self.transforms:
            image, boxes = augment_with_boxes(image, boxes, self.transforms, item_rng(self.seed, self.epoch, index))
            boxes, keep, _ = clip_boxes(boxes, height, width)
            labels = labels[keep]
        return {"image": to_tensor(image), "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(labels, dtype=torch.int64), "index": index, "orig_size": (h0, w0)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (all at the input size); keep per-image targets as lists."""
    return {"image": torch.stack([it["image"] for it in items]),  # (B, 1, H, W)
            "targets": [{"boxes": it["boxes"], "labels": it["labels"]} for it in items],
            "index": [it["index"] for it in items], "orig_size": [it["orig_size"] for it in items]}
