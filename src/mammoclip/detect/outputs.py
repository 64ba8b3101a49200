"""Pictures of a detection run: FROC and precision-recall curves, and prediction-vs-truth overlays.

matplotlib is imported lazily with the Agg backend (the ``viz`` extra); overlays are drawn with OpenCV
on the processed image and written as PNG, truth in green, detections in red with their score.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.data.manifest import Bundle
from mammoclip.detect.metrics import FROC_FP_RATES, ClassMatches, froc_curve, pr_curve
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.imageio import read_image, write_bytes_atomic

#: Detections drawn per overlay (highest scores first).
OVERLAY_TOP_K = 5
TRUTH_BGR = (0, 200, 0)
PRED_BGR = (0, 0, 255)


def safe_name(image_id: str) -> str:
    """A file name for an image id (ids may hold ``/``, e.g. CBIS-DDSM's ``case/series``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ConfigError("detection plots need matplotlib: pip install 'mammoclip[viz]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_froc(matches: dict[str, ClassMatches], path: str | Path) -> Path:
    """FROC curves (sensitivity vs false positives per image, log x) of every class; the report points marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, m in matches.items():
        fppi, sens = froc_curve(m.voc)
        ax.step(np.maximum(fppi, FROC_FP_RATES[0] / 2), sens, where="post", label=name)
    for f in FROC_FP_RATES:
        ax.axvline(f, color="#ddd", lw=0.8, zorder=0)
    ax.set(xscale="log", xlim=(FROC_FP_RATES[0] / 2, FROC_FP_RATES[-1] * 1.5), ylim=(0, 1.02),
           xlabel="false positives per image (all images)", ylabel="sensitivity (IoU >= 0.5)", title="FROC")
    ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_pr(matches: dict[str, ClassMatches], path: str | Path) -> Path:
    """Precision-recall curves at IoU 0.5 (VOC matching) of every class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, m in matches.items():
        recall, precision = pr_curve(m.voc)
        ax.plot(np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision]), label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="precision-recall, IoU 0.5")
    ax.legend(loc="lower left")
    return _save(fig, Path(path))


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    gray = ((img - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)  # (H, W) -> (H, W, 3)


def draw_overlay(image: np.ndarray, truth: np.ndarray, preds: pd.DataFrame) -> np.ndarray:
    """The processed image with truth boxes (green) and the top detections (red, with scores), as BGR."""
    import cv2

    canvas = _to_bgr8(image)
    thick = max(1, round(max(canvas.shape[:2]) / 400))
    for b in np.asarray(truth).reshape(-1, 4):
        cv2.rectangle(canvas, (int(b[0]), int(b[1])), (int(np.ceil(b[2])) - 1, int(np.ceil(b[3])) - 1), TRUTH_BGR, thick)
    for r in preds.sort_values("score", ascending=False).head(OVERLAY_TOP_K).to_dict("records"):
        cv2.rectangle(canvas, (int(r["xmin"]), int(r["ymin"])),
                      (int(np.ceil(r["xmax"])) - 1, int(np.ceil(r["ymax"])) - 1), PRED_BGR, thick)
        cv2.putText(canvas, f"{str(r['class'])[:4]} {r['score']:.2f}", (int(r["xmin"]), max(8, int(r["ymin"]) - 2)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.3 * thick, PRED_BGR, 1, cv2.LINE_AA)
    return canvas


def draw_overlays(bundle: Bundle, preds: pd.DataFrame, targets: dict[str, tuple[np.ndarray, np.ndarray]],
                  classes: list[str], out_dir: str | Path, n: int) -> list[Path]:
    """Overlays of ``n`` images: those with findings first, then the highest-scoring normal images."""
    import cv2

    if n <= 0 or len(bundle.images) == 0:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = bundle.images["image_id"].astype(str).tolist()
    top = preds.groupby("image_id")["score"].max() if len(preds) else pd.Series(dtype=float)
    positive = [i for i in ids if len(targets.get(i, (np.zeros((0, 4)),))[0])]
    negative = sorted((i for i in ids if i not in set(positive)), key=lambda i: -float(top.get(i, 0.0)))
    paths = []
    rows = bundle.images.set_index(bundle.images["image_id"].astype(str))
    for iid in (positive + negative)[:n]:
        image = read_image(bundle.abspath(str(rows.loc[iid, "path"])))
        truth = targets.get(iid, (np.zeros((0, 4)),))[0]
        path = out / f"{safe_name(iid)}.png"
        ok, buf = cv2.imencode(".png", draw_overlay(image, truth, preds[preds["image_id"] == iid]))
        if not ok:
            raise DataError(f"PNG encoding failed for overlay {path}")
        paths.append(write_bytes_atomic(path, buf.tobytes()))
    return paths
