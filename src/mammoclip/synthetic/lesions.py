"""Findings of the synthetic cohort: sampling (with latent malignancy), placement and rendering.

A finding is described once in *breast coordinates* (clock face, depth from the nipple, radial
distance from the nipple axis) and projected into both views: in CC the vertical image axis is
lateral (top) to medial, in MLO it is superior (top) to inferior, mixed with the lateral component
by the obliquity of the view (lateral lesions project higher on MLO, the triangulation rule). The
same depth and the same rendering seed are used in both views, so a mass at 2 o'clock, middle
depth, looks the same and sits at the same distance from the nipple in CC and MLO.

Malignancy is a latent per-finding variable drawn first; the BI-RADS lexicon descriptors are then
drawn from distributions conditioned on it, with the positive predictive values of the BI-RADS
atlas as a guide (spiculated/irregular masses and fine pleomorphic/linear calcifications are
mostly malignant, circumscribed oval masses and punctate calcifications mostly benign), so that no
single descriptor decides malignancy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mammoclip.synthetic.anatomy import ViewGeometry, pixel_spacing

#: Box/mask label names, in the order findings are drawn.
FINDING_KINDS: tuple[str, ...] = (
    "mass", "calcification", "distortion", "asymmetry", "skin_thickening", "benign_calcification",
)
#: Default probability that a breast carries each kind of finding. Masses and calcifications are
#: far more common than in screening (where cancer is <1%) so that both classes are well
#: represented in a small cohort.
DEFAULT_PREVALENCE: dict[str, float] = {
    "mass": 0.35,
    "calcification": 0.30,
    "distortion": 0.07,
    "asymmetry": 0.08,
    "skin_thickening": 0.04,
    "benign_calcification": 0.22,
}
#: Probability that a finding of each kind is malignant (the latent variable).
MALIGNANT_RATE: dict[str, float] = {
    "mass": 0.35, "calcification": 0.35, "distortion": 0.55, "asymmetry": 0.12,
    "skin_thickening": 0.25, "benign_calcification": 0.0,
}

# Descriptor distributions conditioned on malignancy: (benign probabilities, malignant probabilities).
MASS_SHAPES = ("oval", "round", "irregular")
MASS_SHAPE_P = ((0.55, 0.32, 0.13), (0.18, 0.14, 0.68))
MASS_MARGINS = ("circumscribed", "obscured", "microlobulated", "indistinct", "spiculated")
MASS_MARGIN_P = ((0.58, 0.20, 0.08, 0.10, 0.04), (0.06, 0.10, 0.16, 0.30, 0.38))
CALC_MORPHOLOGIES = ("punctate", "amorphous", "coarse heterogeneous", "fine pleomorphic", "fine linear")
CALC_MORPH_P = ((0.45, 0.20, 0.20, 0.11, 0.04), (0.06, 0.20, 0.12, 0.38, 0.24))
CALC_DISTRIBUTIONS = ("grouped", "regional", "linear", "segmental")
CALC_DIST_P = ((0.62, 0.25, 0.07, 0.06), (0.45, 0.05, 0.22, 0.28))
BENIGN_CALC_TYPES = ("vascular", "rim", "popcorn")

#: BI-RADS lexicon risk weights used to turn descriptors into a suspicion score (and BI-RADS).
RISK: dict[str, float] = {
    "oval": 0.0, "round": 0.3, "irregular": 1.4,
    "circumscribed": 0.0, "obscured": 0.9, "microlobulated": 1.8, "indistinct": 2.2, "spiculated": 3.2,
    "punctate": 0.0, "amorphous": 1.4, "coarse heterogeneous": 1.4, "fine pleomorphic": 2.9,
    "fine linear": 3.4, "grouped": 0.2, "regional": 0.0, "linear": 1.3, "segmental": 1.3,
}

#: Obliquity of the MLO view (degrees): how much the lateral-medial axis enters the MLO vertical.
MLO_OBLIQUITY_DEG = 40.0


@dataclass
class Finding:
    """One finding of one breast, in breast coordinates, plus its per-view placement."""

    finding_id: str
    kind: str
    side: str  # "L" or "R"
    malignant: bool
    clock: float  # clock-face position in hours (1-12, half hours allowed)
    depth_frac: float  # 0 at the nipple, 1 at the chest wall
    radial_frac: float  # 0 on the nipple axis, 1 at the skin
    size_mm: float  # largest dimension in mm
    attrs: dict[str, object] = field(default_factory=dict)
    seed: int = 0
    score: float = 0.0  # BI-RADS suspicion score
    dist_cm: float = 0.0  # distance from the nipple (cm)
    centers: dict[str, tuple[float, float]] = field(default_factory=dict)  # view -> canonical (x, y)

    @property
    def superior(self) -> float:
        """Superior component of the clock direction (+1 = 12 o'clock)."""
        return float(np.cos(self.clock / 12.0 * 2 * np.pi))

    @property
    def lateral(self) -> float:
        """Lateral component of the clock direction (+1 = 9 o'clock right, 3 o'clock left)."""
        s = float(np.sin(self.clock / 12.0 * 2 * np.pi))
        return -s if self.side == "R" else s

    @property
    def quadrant(self) -> str:
        """Quadrant name (``"upper outer"``...) or ``"retroareolar"`` close behind the nipple."""
        if self.depth_frac < 0.22 and self.radial_frac < 0.3:
            return "retroareolar"
        return f"{'upper' if self.superior > 0 else 'lower'} {'outer' if self.lateral > 0 else 'inner'}"

    @property
    def depth(self) -> str:
        """Depth third: anterior, middle or posterior."""
        return ("anterior", "middle", "posterior")[min(2, int(self.depth_frac * 3))]

    @property
    def clock_text(self) -> str:
        """``"2"`` or ``"10:30"``."""
        hours = int(self.clock)
        return f"{hours}:30" if self.clock - hours > 0.25 else str(hours)


def _choice(rng: np.random.Generator, items: tuple[str, ...], probs: tuple[float, ...]) -> str:
    return items[int(rng.choice(len(items), p=np.asarray(probs) / np.sum(probs)))]


def _sample_clock(rng: np.random.Generator, side: str) -> float:
    """A clock position that is not on a quadrant boundary; upper outer quadrant favoured."""
    hours = np.array([1, 1.5, 2, 2.5, 4, 4.5, 5, 7, 7.5, 8, 10, 10.5, 11, 11.5])
    # Upper outer quadrant: 9-12 on the right, 12-3 on the left (about half of all cancers).
    uoq = (hours > 9) if side == "R" else (hours < 3)
    w = np.where(uoq, 2.0, 1.0)
    return float(rng.choice(hours, p=w / w.sum()))


def sample_findings(rng: np.random.Generator, side: str, patient_idx: int, start: int,
                    prevalence: dict[str, float]) -> list[Finding]:
    """Draw the findings of one breast (at most one of each kind)."""
    out: list[Finding] = []
    for kind in FINDING_KINDS:
        if rng.random() >= prevalence.get(kind, 0.0):
            continue
        malignant = bool(rng.random() < MALIGNANT_RATE[kind])
        m = int(malignant)
        attrs: dict[str, object] = {}
        if kind == "mass":
            attrs["shape"] = _choice(rng, MASS_SHAPES, MASS_SHAPE_P[m])
            attrs["margin"] = _choice(rng, MASS_MARGINS, MASS_MARGIN_P[m])
            size = float(rng.uniform(14, 36) if malignant else rng.uniform(12, 30))
            score = RISK[str(attrs["shape"])] + RISK[str(attrs["margin"])]
        elif kind == "calcification":
            attrs["morphology"] = _choice(rng, CALC_MORPHOLOGIES, CALC_MORPH_P[m])
            attrs["distribution"] = _choice(rng, CALC_DISTRIBUTIONS, CALC_DIST_P[m])
            extent = {"grouped": (8, 18), "linear": (12, 26), "segmental": (18, 34), "regional": (22, 38)}
            size = float(rng.uniform(*extent[str(attrs["distribution"])]))
            attrs["count"] = int(rng.integers(12, 32) * (1.6 if attrs["distribution"] == "regional" else 1.0))
            score = RISK[str(attrs["morphology"])] + RISK[str(attrs["distribution"])]
        elif kind == "distortion":
            size = float(rng.uniform(16, 32))
            score = 3.0
        elif kind == "asymmetry":
            size = float(rng.uniform(18, 34))
            score = 0.8
        elif kind == "skin_thickening":
            size = float(rng.uniform(30, 55))
            attrs["thickness_mm"] = float(round(rng.uniform(4.0, 7.0), 1))
            score = 1.2
        else:
            attrs["type"] = BENIGN_CALC_TYPES[int(rng.integers(len(BENIGN_CALC_TYPES)))]
            size = float({"vascular": rng.uniform(35, 60), "rim": rng.uniform(6, 14),
                          "popcorn": rng.uniform(7, 13)}[str(attrs["type"])])
            score = -10.0
        score += float(rng.normal(0, 0.6)) + (0.8 if malignant else 0.0)
        out.append(Finding(
            finding_id=f"F{patient_idx:05d}{side}{start + len(out)}",
            kind=kind, side=side, malignant=malignant,
            clock=_sample_clock(rng, side),
            depth_frac=float(rng.uniform(0.15, 0.8)),
            radial_frac=float(rng.uniform(0.0, 0.65)),
            size_mm=round(size, 0) if size < 20 else round(size / 2, 0) * 2,
            attrs=attrs, seed=int(rng.integers(2**31)), score=score,
        ))
    return out


def finding_birads(f: Finding) -> int:
    """BI-RADS assessment of a single finding from its suspicion score."""
    if f.kind == "benign_calcification":
        return 2
    if f.kind == "asymmetry" and f.score < 1.6:
        return 0
    if f.score < 1.0:
        return 3
    return 4 if f.score < 3.6 else 5


#: Order of severity used to combine finding assessments into a breast assessment.
BIRADS_SEVERITY: dict[int, int] = {1: 0, 2: 1, 3: 2, 0: 3, 4: 4, 5: 5, 6: 6}


def breast_birads(findings: list[Finding]) -> int:
    """Breast-level BI-RADS: the most severe of its findings (1 when it has none)."""
    cats = [finding_birads(f) for f in findings] or [1]
    return max(cats, key=BIRADS_SEVERITY.__getitem__)


def _reach_mm(f: Finding) -> float:
    """Half-size of the square patch a finding is rendered in (mm)."""
    if f.kind == "mass":
        return f.size_mm * (1.5 if f.attrs.get("margin") == "spiculated" else 0.85) + 3
    if f.kind == "skin_thickening":
        return f.size_mm / 2 + 4
    return f.size_mm / 2 + 4


def project(f: Finding, geom: ViewGeometry, radial: float | None = None) -> tuple[float, float]:
    """Canonical (x, y) of a finding's centre in one view."""
    x = geom.depth * (1.0 - f.depth_frac)
    above, below = geom.extent_at(x)
    if geom.view == "CC":
        v = f.lateral
    else:
        phi = np.deg2rad(MLO_OBLIQUITY_DEG)
        v = f.superior * np.cos(phi) + f.lateral * np.sin(phi)
    r = f.radial_frac if radial is None else radial
    y = geom.nipple[1] - r * v * (above if v > 0 else below)
    return float(x), float(y)


def place(f: Finding, geoms: dict[str, ViewGeometry], image_size: tuple[int, int],
          rng: np.random.Generator) -> bool:
    """Choose a position that fits in both views (inside the breast, off the pectoral muscle).

    Retries with new depth/radial positions (and, at last, smaller sizes); returns False when the
    finding cannot be placed (it is then dropped).
    """
    sy, sx = pixel_spacing(image_size)
    for attempt in range(40):
        if attempt and attempt % 10 == 0:
            f.size_mm = max(6.0, round(f.size_mm * 0.8))
        if attempt:
            f.depth_frac = float(rng.uniform(0.12, 0.8))
            f.radial_frac = float(rng.uniform(0.0, 0.6))
            f.clock = _sample_clock(rng, f.side)
        ok = True
        centers = {}
        for view, g in geoms.items():
            radial = 0.97 if f.kind == "skin_thickening" else None
            x, y = project(f, g, radial)
            if f.kind == "skin_thickening":
                centers[view] = _nearest_skin(g, x, y)
                continue
            centers[view] = (x, y)
            need_mm = min(_reach_mm(f), f.size_mm * 0.6 + 3.0)
            ix, iy = int(round(x)), int(round(y))
            if not (0 <= iy < g.mask.shape[0] and 0 <= ix < g.mask.shape[1]):
                ok = False
                break
            if g.dist[iy, ix] * 0.5 * (sx + sy) < need_mm + 2.0 or ix * sx < need_mm + 3.0:
                ok = False
                break
            rx, ry = int(need_mm / sx), int(need_mm / sy)
            y0, y1 = max(0, iy - ry), min(g.mask.shape[0], iy + ry + 1)
            x0, x1 = max(0, ix - rx), min(g.mask.shape[1], ix + rx + 1)
            if g.pectoral[y0:y1, x0:x1].max(initial=0.0) > 0.05:
                ok = False
                break
        if ok:
            f.centers = centers
            cc = geoms.get("CC") or next(iter(geoms.values()))
            above, below = cc.extent_at(cc.depth * (1 - f.depth_frac))
            r_mm = f.radial_frac * 0.5 * (above + below) * sy
            f.dist_cm = round(float(np.hypot(f.depth_frac * cc.depth * sx, r_mm)) / 10.0, 1)
            return True
    return False


def _nearest_skin(g: ViewGeometry, x: float, y: float) -> tuple[float, float]:
    """The skin-line pixel closest to ``(x, y)`` (skin thickening is centred on the skin)."""
    ys, xs = np.nonzero(g.mask & (g.dist <= 1.5) & (g.pectoral < 0.05))
    i = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
    return float(xs[i]), float(ys[i])


@dataclass
class Patch:
    """A rendered finding: intensity to add and its mask, on a window of the canonical image."""

    y0: int
    x0: int
    add: np.ndarray  # (h, w) float32
    mask: np.ndarray  # (h, w) bool


def _grid(center: tuple[float, float], reach_mm: float, image_size: tuple[int, int]):
    sy, sx = pixel_spacing(image_size)
    h, w = image_size
    cx, cy = center
    rx, ry = int(np.ceil(reach_mm / sx)) + 2, int(np.ceil(reach_mm / sy)) + 2
    x0, x1 = max(0, int(cx) - rx), min(w, int(cx) + rx + 1)
    y0, y1 = max(0, int(cy) - ry), min(h, int(cy) + ry + 1)
    xs = (np.arange(x0, x1, dtype=np.float32) - cx) * sx  # mm
    ys = (np.arange(y0, y1, dtype=np.float32) - cy) * sy
    return y0, x0, xs[None, :], ys[:, None], (sx, sy)


def _to_px(pts_mm: np.ndarray, center: tuple[float, float], y0: int, x0: int,
           spacing: tuple[float, float]) -> np.ndarray:
    """mm offsets (N, 2) -> patch pixel coordinates (N, 2) as float."""
    return np.stack([center[0] - x0 + pts_mm[:, 0] / spacing[0], center[1] - y0 + pts_mm[:, 1] / spacing[1]], 1)


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    import cv2

    if sigma_px < 0.3:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigma_px)


def _render_mass(f: Finding, view: str, center, image_size) -> Patch:
    import cv2

    rng = np.random.default_rng(f.seed)
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    px = 0.5 * (sp[0] + sp[1])
    shape, margin = str(f.attrs["shape"]), str(f.attrs["margin"])
    ratio = {"round": rng.uniform(1.0, 1.1), "oval": rng.uniform(1.3, 1.7), "irregular": rng.uniform(1.0, 1.4)}[shape]
    angle = rng.uniform(0, np.pi) + (rng.uniform(-0.4, 0.4) if view == "MLO" else 0.0)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (X * ca + Y * sa) / np.sqrt(ratio)
    v = (-X * sa + Y * ca) * np.sqrt(ratio)
    phi = np.arctan2(v, u)
    mod = np.zeros_like(phi)
    if shape == "irregular":
        for k in range(2, 6):
            mod += rng.uniform(0.05, 0.13) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    if margin == "microlobulated":
        k = int(rng.integers(9, 15))
        mod += 0.06 * np.abs(np.cos(k * phi / 2 + rng.uniform(0, np.pi)))
    r0 = f.size_mm / 2.0 / np.sqrt(ratio) * 0.92
    rel = np.hypot(u, v) / (r0 * (1.0 + mod))
    core = rel < 1.0
    body = np.sqrt(np.clip(1.0 - rel**4, 0, 1)).astype(np.float32)
    sigma_mm = {"circumscribed": 0.25, "obscured": 0.6, "microlobulated": 0.35,
                "indistinct": 0.16 * f.size_mm, "spiculated": 0.5}[margin]
    body = _blur(body, sigma_mm / px)
    if margin == "obscured":  # part of the border hidden by overlying tissue: fade one side
        fade = 0.55 + 0.45 * np.clip(np.cos(phi - rng.uniform(0, 2 * np.pi)) + 0.3, 0, 1)
        body = body * fade.astype(np.float32)
    contrast = float(rng.uniform(0.25, 0.35))
    add = contrast * body
    if margin == "spiculated":
        lines = np.zeros_like(body)
        n = int(rng.integers(12, 24))
        for a in np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 1, n) * 0.3:
            length = r0 * (1.0 + rng.uniform(0.5, 1.5))
            d = np.array([[np.cos(a), np.sin(a)]])
            pts = _to_px(np.concatenate([d * r0 * 0.6, d * length]), center, y0, x0, sp)
            cv2.line(lines, tuple(int(v) for v in pts[0]), tuple(int(v) for v in pts[1]),
                     float(rng.uniform(0.5, 1.0)), max(1, int(round(0.45 / px))), cv2.LINE_AA)
        add = add + 0.6 * contrast * _blur(lines, 0.4 / px)
    return Patch(y0, x0, add.astype(np.float32), core)


def _calc_points(f: Finding, rng: np.random.Generator) -> np.ndarray:
    """Calcification centres in mm relative to the cluster centre, (N, 2)."""
    n = int(f.attrs["count"])
    ext = f.size_mm
    dist = str(f.attrs["distribution"])
    axis = rng.uniform(-0.35, 0.35)  # roughly along the ducts, toward the nipple (+x)
    d = np.array([np.cos(axis), np.sin(axis)])
    p = np.array([-d[1], d[0]])
    if dist == "grouped":
        pts = rng.normal(0, ext / 5.0, (n, 2))
    elif dist == "linear":
        t = rng.uniform(-ext / 2, ext / 2, n)
        pts = t[:, None] * d + rng.normal(0, 0.7, n)[:, None] * p
    elif dist == "segmental":
        t = rng.uniform(0, 1, n)
        pts = (t[:, None] - 0.5) * ext * d + (t * rng.uniform(-0.3, 0.3, n) * ext)[:, None] * p
    else:
        pts = rng.uniform(-ext / 2, ext / 2, (n, 2)) * np.array([1.0, 0.7])
    lim = ext / 2
    return np.clip(pts, -lim, lim)


def _render_calcification(f: Finding, view: str, center, image_size) -> Patch:
    import cv2

    rng = np.random.default_rng(f.seed)
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    px = 0.5 * (sp[0] + sp[1])
    pts = _calc_points(f, rng)
    if view == "MLO":  # a different projection of the same cluster
        a = rng.uniform(-0.5, 0.5)
        pts = pts @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    canvas = np.zeros((Y.shape[0], X.shape[1]), np.float32)
    morph = str(f.attrs["morphology"])
    size_mm = {"punctate": (0.5, 0.8), "amorphous": (0.4, 0.6), "coarse heterogeneous": (0.7, 1.3),
               "fine pleomorphic": (0.4, 0.9), "fine linear": (0.4, 0.55)}[morph]
    level = 0.75 if morph == "amorphous" else 1.0
    ppx = _to_px(pts, center, y0, x0, sp)
    shift = 4  # sub-pixel drawing
    for (cx, cy) in ppx:
        dmm = rng.uniform(*size_mm)
        r = max(0.8, dmm / 2 / px)
        val = level * rng.uniform(0.75, 1.0)
        c = (int(cx * 2**shift), int(cy * 2**shift))
        if morph == "fine linear":  # thin, irregular, sometimes branching casts of a duct
            a = rng.uniform(-0.5, 0.5)  # along the ducts
            seg = rng.uniform(0.6, 1.4, int(rng.integers(2, 4))) / px
            angles = a + np.cumsum(rng.normal(0, 0.35, seg.size))
            pts = np.concatenate([[[cx, cy]], np.array([cx, cy]) + np.cumsum(
                np.stack([seg * np.cos(angles), seg * np.sin(angles)], 1), axis=0)])
            if rng.random() < 0.4:  # a short branch from the middle
                b = pts[1] + seg[0] * 0.8 * np.array([np.cos(a + 0.8), np.sin(a + 0.8)])
                cv2.line(canvas, tuple(int(v * 2**shift) for v in pts[1]), tuple(int(v * 2**shift) for v in b),
                         val, 1, cv2.LINE_AA, shift)
            cv2.polylines(canvas, [(pts * 2**shift).astype(np.int32)], False, val,
                          max(1, int(round(r * 0.8))), cv2.LINE_AA, shift)
        elif morph in ("coarse heterogeneous", "fine pleomorphic"):
            k = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rr = r * rng.uniform(0.6, 1.4, k)
            poly = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1) * 2**shift
            cv2.fillPoly(canvas, [poly.astype(np.int32)], val, cv2.LINE_AA, shift)
        else:
            cv2.circle(canvas, c, int(r * 2**shift), val, -1, cv2.LINE_AA, shift)
    # Amorphous calcifications are hazy: blur them more (but keep their summed brightness visible).
    canvas = _blur(canvas, 0.45) if morph != "amorphous" else 1.8 * _blur(canvas, max(0.45, 0.18 / px))
    canvas = np.clip(canvas, 0, 1)
    contrast = float(rng.uniform(0.5, 0.7))
    hull = cv2.convexHull(ppx.astype(np.float32)).astype(np.int32)
    mask = np.zeros(canvas.shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    pad = max(2, int(round(1.5 / px)))
    mask = cv2.dilate(mask, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)) > 0
    return Patch(y0, x0, contrast * canvas, mask)


def _render_distortion(f: Finding, view: str, center, image_size) -> Patch:
    import cv2

    rng = np.random.default_rng(f.seed)
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    px = 0.5 * (sp[0] + sp[1])
    canvas = np.zeros((Y.shape[0], X.shape[1]), np.float32)
    n = int(rng.integers(10, 20))
    ends = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.25, 0.25, n):
        length = f.size_mm / 2 * rng.uniform(0.5, 1.0)
        d = np.array([np.cos(a), np.sin(a)])
        p = np.array([-d[1], d[0]])
        t = np.linspace(0.08, 1.0, 5)[:, None]
        bend = rng.normal(0, 0.06) * length * np.sin(np.pi * t)  # slightly curved strands
        pts = _to_px(t * length * d + bend * p, center, y0, x0, sp)
        ends.append(pts[-1])
        level = float(rng.uniform(0.6, 1.0))
        for i in range(len(pts) - 1):  # fading toward the periphery
            cv2.line(canvas, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[i + 1]),
                     level * (1.0 - 0.15 * i), max(1, int(round(rng.uniform(0.3, 0.6) / px))), cv2.LINE_AA)
    canvas = _blur(canvas, 0.5 / px)
    # Tethered tissue: a faint density pulled toward the centre.
    glow = np.exp(-(X**2 + Y**2) / (2 * (f.size_mm / 5) ** 2)).astype(np.float32)
    add = float(rng.uniform(0.18, 0.26)) * canvas + 0.09 * glow
    hull = cv2.convexHull(np.asarray(ends, np.float32)).astype(np.int32)
    mask = np.zeros(canvas.shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return Patch(y0, x0, add.astype(np.float32), mask > 0)


def _render_asymmetry(f: Finding, view: str, center, image_size) -> Patch:
    import cv2

    from mammoclip.synthetic.texture import power_law_noise

    rng = np.random.default_rng(f.seed)
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    h, w = Y.shape[0], X.shape[1]
    ax, ay = f.size_mm / 2, f.size_mm / 2 * rng.uniform(0.55, 0.8)
    env = np.exp(-((X / ax) ** 2 + (Y / ay) ** 2) ** 1.5).astype(np.float32)
    tex = power_law_noise((max(8, h // 2), max(8, w // 2)), 2.5, rng)
    tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)
    density = env * np.clip(0.75 + 0.25 * tex, 0.3, 1.2)
    add = float(rng.uniform(0.2, 0.27)) * density
    return Patch(y0, x0, add.astype(np.float32), env > 0.45)


def _render_skin(f: Finding, view: str, center, image_size, geom: ViewGeometry) -> Patch:
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    px = 0.5 * (sp[0] + sp[1])
    h, w = Y.shape[0], X.shape[1]
    dist = geom.dist[y0:y0 + h, x0:x0 + w] * px  # mm to the skin line
    inside = geom.mask[y0:y0 + h, x0:x0 + w]
    thick = float(f.attrs["thickness_mm"])
    along = np.exp(-((X**2 + Y**2) / (f.size_mm / 2) ** 2) ** 2)
    band = np.clip((thick - dist) / 0.8, 0, 1) * inside * along
    add = 0.14 * band + 0.03 * np.clip((thick + 6 - dist) / 6, 0, 1) * inside * along
    return Patch(y0, x0, add.astype(np.float32), band > 0.5)


def _render_benign_calc(f: Finding, view: str, center, image_size) -> Patch:
    import cv2

    rng = np.random.default_rng(f.seed)
    y0, x0, X, Y, sp = _grid(center, _reach_mm(f), image_size)
    px = 0.5 * (sp[0] + sp[1])
    canvas = np.zeros((Y.shape[0], X.shape[1]), np.float32)
    kind = str(f.attrs["type"])
    width = max(1, int(round(0.45 / px)))
    if kind == "vascular":  # tram-track calcified vessel wall, interrupted
        t = np.linspace(-0.5, 0.5, 40)[:, None] * f.size_mm
        a = rng.uniform(-0.6, 0.6)
        d, p = np.array([[np.cos(a), np.sin(a)]]), np.array([[-np.sin(a), np.cos(a)]])
        path = t * d + (rng.uniform(2, 5) * np.sin(t / f.size_mm * np.pi * rng.uniform(1, 2))) * p
        for off in (-0.7, 0.7):
            pts = _to_px(path + off * p, center, y0, x0, sp)
            keep = rng.random(len(pts) - 1) > 0.2
            for i in np.flatnonzero(keep):
                cv2.line(canvas, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[i + 1]), 1.0, width,
                         cv2.LINE_AA)
        mask = np.zeros(canvas.shape, np.uint8)
        cv2.polylines(mask, [_to_px(path, center, y0, x0, sp).astype(np.int32)], False, 1,
                      max(2, int(round(3.0 / px))))
        mask = mask > 0
    elif kind == "rim":  # eggshell calcification around an oil cyst
        r = f.size_mm / 2
        c = _to_px(np.zeros((1, 2)), center, y0, x0, sp)[0]
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), (max(2, int(r / sp[0])), max(2, int(r / sp[1]))),
                    0, 0, 360, 1.0, max(1, int(round(0.9 / px))), cv2.LINE_AA)
        mask = (X / (r + 1)) ** 2 + (Y / (r + 1)) ** 2 <= 1
    else:  # popcorn: coarse clumps in an involuting fibroadenoma
        pts = rng.normal(0, f.size_mm / 6, (int(rng.integers(5, 9)), 2))
        ppx = _to_px(pts, center, y0, x0, sp)
        for (cx, cy) in ppx:
            k = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rr = rng.uniform(0.8, 1.8, k) / px
            poly = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
            cv2.fillPoly(canvas, [poly.astype(np.int32)], 1.0, cv2.LINE_AA)
        mask = np.zeros(canvas.shape, np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(ppx.astype(np.float32)).astype(np.int32), 1)
        pad = max(2, int(round(2.0 / px)))
        mask = cv2.dilate(mask, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)) > 0
    canvas = _blur(canvas, 0.4)
    return Patch(y0, x0, float(rng.uniform(0.4, 0.55)) * canvas, mask)


_RENDERERS: dict[str, Callable[..., Patch]] = {
    "mass": _render_mass,
    "calcification": _render_calcification,
    "distortion": _render_distortion,
    "asymmetry": _render_asymmetry,
    "benign_calcification": _render_benign_calc,
}


def render(f: Finding, view: str, geom: ViewGeometry, image_size: tuple[int, int]) -> Patch:
    """Render a placed finding in one view (canonical frame)."""
    center = f.centers[view]
    if f.kind == "skin_thickening":
        return _render_skin(f, view, center, image_size, geom)
    return _RENDERERS[f.kind](f, view, center, image_size)
