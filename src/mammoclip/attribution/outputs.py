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
            truth: np.ndarray | None = None, peak: tuple[float, float] | None = None,
            height: int | None = None) -> np.ndarray:
    """An RGB overlay: the mammogram in grey, the heatmap as a JET colour map, region boxes in white,
    truth boxes in green, the ``peak`` (x, y in processed pixels) as a white cross, and ``title`` on top.

    Args:
        height: Draw at this height (grid tiles); default: the image's, at least :data:`OVERLAY_MIN_HEIGHT`.

    Returns:
        ``(H', W', 3)`` uint8.
    """
    import cv2

    g = image.astype(np.float32)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    grey = np.repeat((g * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    out = (grey * (1 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA).astype(np.uint8)
    f = height / out.shape[0] if height else max(1.0, OVERLAY_MIN_HEIGHT / out.shape[0])
    out = np.ascontiguousarray(cv2.resize(out, (round(out.shape[1] * f), round(out.shape[0] * f)),
                                          interpolation=cv2.INTER_LINEAR))
    for r in regions:
        cv2.rectangle(out, (round(r["xmin"] * f), round(r["ymin"] * f)), (round(r["xmax"] * f) - 1,
                      round(r["ymax"] * f) - 1), (255, 255, 255), 1)
    for b in np.asarray(truth if truth is not None else np.zeros((0, 4))).reshape(-1, 4):
        cv2.rectangle(out, (round(b[0] * f), round(b[1] * f)), (round(b[2] * f) - 1, round(b[3] * f) - 1),
                      (0, 255, 0), 2)
    if peak is not None:
        cv2.drawMarker(out, (round(peak[0] * f), round(peak[1] * f)), (255, 255, 255), cv2.MARKER_CROSS,
                       max(9, round(out.shape[0] / 24)), 2)
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    scale = 0.45
    width = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    if width > out.shape[1] - 8:  # a narrow tile: shrink the title rather than cut it off
        scale *= (out.shape[1] - 8) / width
    cv2.putText(out, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
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


#: Height of one tile of a localization overlay grid (``factor eval``), in pixels.
GRID_TILE_HEIGHT: int = 256
#: White gap between the tiles of a grid, in pixels.
GRID_GAP: int = 4


def overlay_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = GRID_GAP) -> np.ndarray:
    """Rows of equal-size ``(H, W, 3)`` tiles -> one RGB image with white gaps between them."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    return out


def spread_over_patients(images: pd.DataFrame, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` of the manifest ``rows``: one image per patient first (in manifest order), then second ones.

    A grid of four views of one patient shows one lesion four times; spreading over patients shows more.
    """
    patients = images["patient_id"].iloc[rows].astype(str).reset_index(drop=True)
    turn = patients.groupby(patients, sort=False).cumcount().to_numpy()  # 0 for a patient's first image
    order = np.lexsort((np.arange(len(rows)), turn))
    return np.asarray(rows)[order[:max(n, 0)]]


def localization_overlays(explainers: dict[str, Explainer], bundle: Bundle, attributes: Sequence[Any],
                          table: pd.DataFrame, out_dir: str | Path, n: int, *, batch_size: int = 8,
                          num_workers: int = 0) -> list[dict[str, Any]]:
    """An overlay grid per attribute: ``n`` scored images as rows, the methods as columns.

    Each tile is the method's heatmap on the mammogram with the attribute's truth boxes (green), the top
    region (white box, the one the hit rates score) and the heatmap's peak (white cross, the pointing
    game's point); its title is the method and the top region's IoU from ``table``. Tiles are written to
    ``overlays/<attribute>/<image>__<method>.png`` and the whole grid to ``overlays/<attribute>.png``.

    Args:
        explainers: ``method -> Explainer``, in column order (FActOR first).
        attributes: The :class:`~mammoclip.attribution.attributes.AttributeSpec` of each attribute.
        table: The per-image localization table (:func:`~mammoclip.attribution.localization.localization_table`).

    Returns:
        One entry per attribute with images: ``attribute``, ``file`` (the grid), ``methods`` and ``rows``
        (``image_id``, ``patient_id``, ``tiles``: ``method -> file``); paths relative to ``out_dir``.
    """
    from mammoclip.attribution.localization import scored_rows, truth_for
    from mammoclip.evaluate.features import image_batches
    from mammoclip.imaging.imageio import read_image

    out = Path(out_dir)
    model = next(iter(explainers.values())).model
    iou = table.set_index(["method", "attribute", "image_id"])["iou"].to_dict() if len(table) else {}
    grids: list[dict[str, Any]] = []
    for spec in attributes:
        chosen = spread_over_patients(bundle.images, scored_rows(bundle, spec), n)
        if len(chosen) == 0:
            continue
        sub = Bundle(bundle.images.iloc[chosen].reset_index(drop=True), bundle.boxes, bundle.reports, bundle.root)
        folder = out / "overlays" / slug(spec.name)
        rows: list[dict[str, Any]] = []
        tiles: list[list[np.ndarray]] = []
        for idx, images in image_batches(model, sub, batch_size=batch_size, num_workers=num_workers):
            outs = {m: ex(images) for m, ex in explainers.items()}  # (B, A, H, W) heatmaps, (B, A) scores
            for j, i in enumerate(idx.tolist()):
                row = sub.images.iloc[i]
                image_id = str(row["image_id"])
                pixels = read_image(sub.abspath(str(row["path"])))
                entry: dict[str, Any] = {"image_id": image_id, "patient_id": str(row["patient_id"]), "tiles": {}}
                line = []
                for method, (heats, _) in outs.items():
                    heat = heats[j, explainers[method].ctx.attributes.index(spec.name)]
                    truth = truth_for(sub, row, spec, heat.shape)[0]
                    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
                    value = iou.get((method, spec.name, image_id), float("nan"))
                    tile = overlay(pixels, heat, f"{method}  IoU {value:.2f}", regions=heat_regions(heat)[:1],
                                   truth=truth, peak=(px + 0.5, py + 0.5), height=GRID_TILE_HEIGHT)
                    path = write_rgb_png(folder / f"{slug(image_id)}__{slug(method)}.png", tile)
                    entry["tiles"][method] = str(path.relative_to(out))
                    line.append(tile)
                rows.append(entry)
                tiles.append(line)
        grid = write_rgb_png(out / "overlays" / f"{slug(spec.name)}.png", overlay_grid(tiles))
        grids.append({"attribute": spec.name, "file": str(grid.relative_to(out)), "methods": list(explainers),
                      "rows": rows})
    return grids
