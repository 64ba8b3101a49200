"""Breast geometry of the synthetic cohort: outline, skin distance, nipple and pectoral muscle.

Everything is drawn in a *canonical frame*: chest wall at the left image edge (x = 0), nipple
pointing right, superior (MLO) or lateral (CC) side at the top. Right breasts are mirrored at the
very end (:func:`mammoclip.synthetic.cohort`), so that, as on a reading station, the chest
wall of a right breast is at the right edge and that of a left breast at the left edge.

The outline of a compressed breast is a super-ellipse (``x = d (1 - |t|^p)^(1/q)``), the shape
model used by many breast phantoms (e.g. Bakic et al., Med Phys 2002, and the "compressed breast"
outlines of the VICTRE project): it is round at the nipple and flattens toward the chest wall. In
the MLO view the upper branch is stretched up to the axilla so that the breast reaches the top edge
where the pectoral muscle is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Physical field of view (height, width) in mm of a synthetic image at any size: 1520 x 912
#: pixels of 0.16 mm, close to a 24 x 30 cm detector cropped to the breast. Smaller images have
#: larger pixels, so lesions keep their physical size.
FIELD_OF_VIEW_MM: tuple[float, float] = (243.2, 145.92)


def pixel_spacing(image_size: tuple[int, int]) -> tuple[float, float]:
    """Pixel spacing ``(row, column)`` in mm of a synthetic image of ``image_size = (H, W)``."""
    return FIELD_OF_VIEW_MM[0] / image_size[0], FIELD_OF_VIEW_MM[1] / image_size[1]


@dataclass(frozen=True)
class BreastShape:
    """Shape parameters of one breast, shared by its CC and MLO views (fractions of the image)."""

    cc_depth: float  # nipple distance from the chest wall in CC, fraction of W
    cc_half_lateral: float  # extent above the nipple axis (lateral side) in CC, fraction of H
    cc_half_medial: float  # extent below the nipple axis (medial side) in CC, fraction of H
    cc_center: float  # nipple row in CC, fraction of H
    p: float  # super-ellipse exponent along the chest wall (larger = squarer)
    q: float  # super-ellipse exponent toward the nipple
    mlo_depth: float  # nipple distance from the chest wall in MLO, fraction of W
    mlo_nipple: float  # nipple row in MLO, fraction of H
    mlo_lower: float  # extent below the nipple to the inframammary fold, fraction of H
    mlo_top_width: float  # breast width at the top edge (axilla) in MLO, fraction of W
    pect_width: float  # pectoral muscle width at the top edge, fraction of W
    pect_height: float  # pectoral muscle length along the chest wall, fraction of H
    pect_curve: float  # exponent of the pectoral border (1 = straight, <1 convex)
    nipple_mm: float  # nipple protrusion radius in mm
    wobble: tuple[float, float, float]  # small outline irregularity (amplitude, frequency, phase)


def sample_patient_shape(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient shape traits that both breasts share (size, build)."""
    return {
        "size": float(rng.uniform(0.78, 1.0)),
        "round": float(rng.uniform(1.8, 2.6)),
        "pect": float(rng.uniform(0.0, 1.0)),
        "center": float(rng.uniform(0.47, 0.53)),
    }


def sample_breast_shape(rng: np.random.Generator, patient: dict[str, float]) -> BreastShape:
    """One breast's shape: the patient's traits plus a little left/right jitter."""
    s = patient["size"] * rng.uniform(0.97, 1.03)
    cc_depth = s * rng.uniform(0.70, 0.84)
    mlo_depth = min(0.93, cc_depth * rng.uniform(1.02, 1.10))
    pect_width = 0.26 + 0.16 * patient["pect"] + rng.uniform(-0.02, 0.02)
    return BreastShape(
        cc_depth=cc_depth,
        cc_half_lateral=s * rng.uniform(0.39, 0.45),
        cc_half_medial=s * rng.uniform(0.36, 0.42),
        cc_center=patient["center"] + rng.uniform(-0.01, 0.01),
        p=patient["round"] + rng.uniform(-0.1, 0.1),
        q=rng.uniform(1.7, 2.1),
        mlo_depth=mlo_depth,
        mlo_nipple=rng.uniform(0.53, 0.62),
        mlo_lower=s * rng.uniform(0.30, 0.36),
        mlo_top_width=min(pect_width + rng.uniform(0.08, 0.14), 0.85 * mlo_depth),
        pect_width=pect_width,
        pect_height=0.40 + 0.22 * patient["pect"] + rng.uniform(-0.03, 0.03),
        pect_curve=rng.uniform(0.75, 1.05),
        nipple_mm=rng.uniform(4.0, 6.0),
        wobble=(rng.uniform(0.004, 0.012), rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)),
    )


@dataclass
class ViewGeometry:
    """The rendered geometry of one view in the canonical frame (chest wall at x = 0)."""

    view: str
    mask: np.ndarray  # (H, W) bool: breast incl. nipple and pectoral muscle
    dist: np.ndarray  # (H, W) float32: distance to the skin line in pixels (0 outside)
    edge: np.ndarray  # (H,) float32: outline column per row (0 where the row is outside)
    pectoral: np.ndarray  # (H, W) float32 soft pectoral mask in [0, 1] (all 0 in CC)
    nipple: tuple[float, float]  # (x, y) of the nipple tip
    depth: float  # nipple column (chest wall to nipple distance in px)

    def extent_at(self, x: float) -> tuple[float, float]:
        """Breast extent (above, below) the nipple row at column ``x``, in pixels."""
        rows = np.flatnonzero(self.edge > x)
        if rows.size == 0:
            return 0.0, 0.0
        yn = self.nipple[1]
        return max(0.0, yn - rows[0]), max(0.0, rows[-1] - yn)


def _superellipse(t: np.ndarray, depth: float, p: float, q: float) -> np.ndarray:
    inside = np.abs(t) < 1
    out = np.zeros_like(t)
    out[inside] = depth * (1.0 - np.abs(t[inside]) ** p) ** (1.0 / q)
    return out


def _outline(shape: BreastShape, view: str, h: int, w: int) -> tuple[np.ndarray, float, float]:
    """Column of the skin line per row, the nipple row and the nipple column."""
    y = np.arange(h, dtype=np.float64)
    amp, freq, phase = shape.wobble
    if view == "CC":
        depth = shape.cc_depth * w
        yn = shape.cc_center * h
        half = np.where(y < yn, shape.cc_half_lateral, shape.cc_half_medial) * h
        edge = _superellipse((y - yn) / half, depth, shape.p, shape.q)
    else:
        depth = shape.mlo_depth * w
        yn = shape.mlo_nipple * h
        top = min(shape.mlo_top_width * w, 0.95 * depth)
        # Choose the upper half-extent so that the outline meets the top edge at the axilla width.
        t0 = (1.0 - (top / depth) ** shape.q) ** (1.0 / (shape.p * 0.7))
        half_up = yn / t0
        lower = np.clip((y - yn) / (shape.mlo_lower * h), 0, None)
        upper = np.clip((yn - y) / half_up, 0, None)
        edge = np.where(
            y < yn,
            _superellipse(upper, depth, shape.p * 0.7, shape.q),
            _superellipse(lower, depth, shape.p * 1.1, shape.q),
        )
    edge = edge * (1.0 + amp * np.sin(2 * np.pi * freq * y / h + phase))
    return edge.astype(np.float32), float(yn), float(edge[int(round(yn))] if 0 <= yn < h else depth)


def build_view(shape: BreastShape, view: str, image_size: tuple[int, int]) -> ViewGeometry:
    """Rasterise the breast outline, nipple, skin distance and (MLO) pectoral muscle.

    Args:
        shape: The breast's shape parameters.
        view: ``"CC"`` or ``"MLO"``.
        image_size: ``(H, W)`` in pixels.
    """
    import cv2

    h, w = image_size
    sy, sx = pixel_spacing(image_size)
    edge, yn, xn = _outline(shape, view, h, w)
    xs = np.arange(w, dtype=np.float32)
    mask = xs[None, :] < edge[:, None]  # (H, W)
    # Nipple: a small half-ellipse beyond the outline, centred on the nipple axis.
    rx, ry = shape.nipple_mm / sx, shape.nipple_mm * 1.2 / sy
    yy = np.arange(h, dtype=np.float32)[:, None]
    x0 = max(0, int(xn - rx))
    x1 = min(w, int(np.ceil(xn + rx)) + 1)
    y0 = max(0, int(yn - ry))
    y1 = min(h, int(np.ceil(yn + ry)) + 1)
    sub_x = xs[None, x0:x1]
    sub_y = yy[y0:y1]
    nip = ((sub_x - xn) / max(rx, 1.0)) ** 2 + ((sub_y - yn) / max(ry, 1.0)) ** 2 <= 1.0
    mask[y0:y1, x0:x1] |= nip
    tip_x = float(min(w - 1, xn + 0.8 * rx))

    # Distance to the skin line (the chest-wall edge is not skin: OpenCV treats the border as tissue).
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)

    pect = np.zeros((h, w), np.float32)
    if view == "MLO":
        pw, ph = shape.pect_width * w, shape.pect_height * h
        rows = np.arange(h, dtype=np.float32)
        border = pw * np.clip(1.0 - rows / ph, 0, 1) ** shape.pect_curve  # (H,) pectoral edge column
        soft = max(1.0, 1.2 / sx)  # ~1.2 mm soft edge
        pect = 1.0 / (1.0 + np.exp(np.clip((xs[None, :] - border[:, None]) / soft, -50, 50)))
        pect = (pect * mask).astype(np.float32)
        pect[border <= 0] = 0
    return ViewGeometry(view=view, mask=mask, dist=dist, edge=edge, pectoral=pect,
                        nipple=(tip_x, yn), depth=float(xn))
