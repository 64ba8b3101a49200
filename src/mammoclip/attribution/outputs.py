"""What ``mammoclip explain`` writes: heatmaps (.npy), overlay PNGs, the regions and scores tables.

Output folder::

    heatmaps/<image_id>__<attribute>.npy            (H, W) float16 in [0, 1] on the processed image
    heatmaps_original/<image_id>__<attribute>.npy   on the original DICOM grid (``original=True``)
    overlays/<image_id>__<attribute>.png            colour map on the mammogram, attribute and score
    regions.csv    image_id, attribute, rank, box and peak in processed pixels, box in original pixels
    scores.csv     image_id, attribute, score
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.attribution.heatmap import REGION_PERCENTILE, Explainer, heat_regions, heatmap_to_original
from mammoclip.attribution.localization import _record
from mammoclip.data.manifest import Bundle
from mammoclip.imaging.breast import TransformRecord
from mammoclip.progress import progress_bar

#: Overlays are drawn at least this tall (small processed images get unreadable labels otherwise).
OVERLAY_MIN_HEIGHT: int = 512
#: Opacity of the colour map over the mammogram.
OVERLAY_ALPHA: float = 0.45


def slug(text: str) -> str:
    """A file-name-safe form of an attribute name (``spiculated mass`` -> ``spiculated-mass``)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "attribute"


def overlay(image: np.ndarray, heat: np.ndarray, title: str, *, regions: Sequence[dict[str, float]] = (),
            truth: np.ndarray | None = None) -> np.ndarray:
    """An RGB overlay: the mammogram in grey, the heatmap as a JET colour map, region boxes in white,
    truth boxes in green, and ``title`` on top. Returns ``(H', W', 3)`` uint8."""
    import cv2

    g = image.astype(np.float32)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    grey = np.repeat((g * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    out = (grey * (1 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA).astype(np.uint8)
    f = max(1.0, OVERLAY_MIN_HEIGHT / out.shape[0])
    out = np.ascontiguousarray(cv2.resize(out, (round(out.shape[1] * f), round(out.shape[0] * f)),
                                          interpolation=cv2.INTER_LINEAR))
    for r in regions:
        cv2.rectangle(out, (round(r["xmin"] * f), round(r["ymin"] * f)), (round(r["xmax"] * f) - 1,
                      round(r["ymax"] * f) - 1), (255, 255, 255), 1)
    for b in np.asarray(truth if truth is not None else np.zeros((0, 4))).reshape(-1, 4):
        cv2.rectangle(out, (round(b[0] * f), round(b[1] * f)), (round(b[2] * f) - 1, round(b[3] * f) - 1),
                      (0, 255, 0), 2)
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_rgb_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB array as PNG, atomically."""
    import cv2

    from mammoclip.imaging.imageio import write_bytes_atomic

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError(f"PNG encoding failed for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, buf.tobytes())


def region_rows(image_id: str, attribute: str, heat: np.ndarray, record: TransformRecord | None,
                percentile: float = REGION_PERCENTILE) -> list[dict[str, Any]]:
    """Regions of one heatmap as table rows, with boxes mapped to original pixels when a record exists."""
    rows = []
    for rank, r in enumerate(heat_regions(heat, percentile)):
        box = np.array([[r["xmin"], r["ymin"], r["xmax"], r["ymax"]]])
        orig = record.map_boxes(box, inverse=True)[0] if record is not None else box[0]
        rows.append({"image_id": image_id, "attribute": attribute, "rank": rank, **r,
                     "orig_xmin": float(orig[0]), "orig_ymin": float(orig[1]), "orig_xmax": float(orig[2]),
                     "orig_ymax": float(orig[3])})
    return rows


def explain_bundle(
    explainer: Explainer, bundle: Bundle, out_dir: str | Path, *, overlays: bool = True, original: bool = False,
    truth: bool = True, batch_size: int = 8, num_workers: int = 0, progress: bool | None = False,
) -> pd.DataFrame:
    """Heatmaps, overlays and regions of every row of ``bundle`` for the explainer's attributes.

    Args:
        original: Also write each heatmap on the original DICOM grid (needs the transform record).
        truth: Draw the manifest's truth boxes of the attribute on the overlays.

    Returns:
        The regions table (also written to ``regions.csv``; scores to ``scores.csv``).
    """

    from mammoclip.attribution.attributes import resolve_attributes
    from mammoclip.attribution.localization import truth_for
    from mammoclip.evaluate.features import check_image_size, image_batches
    from mammoclip.imaging.imageio import read_image

    out = Path(out_dir)
    for sub in ("heatmaps", *(["overlays"] if overlays else []), *(["heatmaps_original"] if original else [])):
        (out / sub).mkdir(parents=True, exist_ok=True)
    check_image_size(explainer.model, bundle)
    specs = {a.name: a for a in (explainer.ctx.mapper.attributes if explainer.ctx.mapper is not None
                                 else resolve_attributes(explainer.ctx.attributes))}
    regions: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    bar = progress_bar(len(bundle.images), "explain", "img", enabled=progress)
    for idx, images in image_batches(explainer.model, bundle, batch_size=batch_size, num_workers=num_workers):
        heats, sc = explainer(images)  # (B, A, H, W), (B, A)
        for j, i in enumerate(idx.tolist()):
            row = bundle.images.iloc[i]
            image_id = str(row["image_id"])
            record = _record(row)
            pixels = read_image(bundle.abspath(str(row["path"]))) if overlays else None
            for a, name in enumerate(explainer.ctx.attributes):
                heat = heats[j, a]
                stem = f"{slug(image_id)}__{slug(name)}"
                np.save(out / "heatmaps" / f"{stem}.npy", heat.astype(np.float16))
                if original and record is not None:
                    np.save(out / "heatmaps_original" / f"{stem}.npy", heatmap_to_original(heat, record).astype(np.float16))
                rows = region_rows(image_id, name, heat, record)
                regions.extend(rows)
                scores.append({"image_id": image_id, "attribute": name, "score": float(sc[j, a])})
                if overlays and pixels is not None:
                    boxes = truth_for(bundle, row, specs[name], heat.shape)[0] if truth and name in specs else None
                    title = f"{name}  score {sc[j, a]:.3f}"
                    write_rgb_png(out / "overlays" / f"{stem}.png", overlay(pixels, heat, title, regions=rows[:1],
                                                                        truth=boxes))
        bar.update(len(idx))
    bar.close()
    table = pd.DataFrame(regions, columns=["image_id", "attribute", "rank", "xmin", "ymin", "xmax", "ymax", "peak",
                                           "peak_x", "peak_y", "area", "orig_xmin", "orig_ymin", "orig_xmax",
                                           "orig_ymax"])
    table.to_csv(out / "regions.csv", index=False)
    pd.DataFrame(scores).to_csv(out / "scores.csv", index=False)
    return table
