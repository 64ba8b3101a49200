"""Film-style synthetic mammograms: a breast plus the clutter of a digitized film, with ground truth.

Digitized screen-film mammograms (e.g. CBIS-DDSM) carry things a detector image does not: burned-in
text labels (patient data, dates, in several fonts and sizes, sometimes on a white label block),
lead markers ("L MLO", "RCC": a saturated rectangle with sharp edges and letters in it), film edges
(straight bright or dark strips along the border) and scanner strips (straight lines of constant
offset from the digitizer). :func:`film_image` draws a breast with the cohort's own anatomy,
texture and acquisition, then adds such artefacts at random positions *outside the breast's
bounding box* (inside it no rectangular crop could leave them out), from far away down to touching
the breast outline, and returns masks of both: the ground truth that ``bench/film.py`` and the
segmentation tests measure crops against.

The cohort generator does not use this module, so cohort outputs (and ``GENERATOR_VERSION``) are
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammoclip.synthetic.acquisition import acquire, sample_profile
from mammoclip.synthetic.anatomy import build_view, pixel_spacing, sample_breast_shape, sample_patient_shape
from mammoclip.synthetic.texture import render_breast

#: OpenCV's Hershey fonts used for labels and markers (plain, sans, serif, script-like).
FONTS: tuple[str, ...] = ("FONT_HERSHEY_SIMPLEX", "FONT_HERSHEY_DUPLEX", "FONT_HERSHEY_COMPLEX",
                          "FONT_HERSHEY_TRIPLEX", "FONT_HERSHEY_PLAIN", "FONT_HERSHEY_COMPLEX_SMALL")
#: Gap between an artefact and the breast's bounding box, as a fraction of the image width: the
#: first is "touching the outline" (the artefact abuts the breast's extreme pixel).
GAPS: tuple[float, ...] = (0.0, 0.004, 0.015, 0.05)
#: Kinds of artefact a film image may carry (the registry :func:`film_image` draws from).
ARTEFACTS: tuple[str, ...] = ("lead_marker", "text_label", "label_block", "film_edge", "scanner_strip")


@dataclass(frozen=True)
class FilmImage:
    """One film-style image and its ground truth.

    Attributes:
        image: ``(H, W)`` uint16, tissue bright (as after MONOCHROME1 inversion).
        breast: ``(H, W)`` bool, every breast pixel (nipple and pectoral muscle included).
        markers: ``(H, W)`` bool, every bright artefact pixel (labels, markers, film edges, strips).
        view: ``CC`` or ``MLO``.
        laterality: ``L`` (chest wall at the left edge) or ``R`` (at the right edge).
        kinds: The artefacts drawn, with their gap to the breast box in pixels.
        boxes: One ``(x0, y0, x1, y1)`` rectangle (exclusive ends) per entry of ``kinds``, holding
            that artefact: with ``markers`` it tells which artefact a crop let in, so a benchmark can
            report the marker rate per gap and kind.
    """

    image: np.ndarray
    breast: np.ndarray
    markers: np.ndarray
    view: str
    laterality: str
    kinds: tuple[tuple[str, int], ...]
    boxes: tuple[tuple[int, int, int, int], ...] = ()


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def _text_patch(rng: np.random.Generator, text: str, height: int) -> np.ndarray:
    """A uint8 0/255 patch with ``text`` in a random Hershey font, about ``height`` pixels tall."""
    import cv2

    font = int(getattr(cv2, FONTS[int(rng.integers(len(FONTS)))]))
    base_scale = max(0.3, height / 22.0)
    thick = max(1, int(round(base_scale * rng.uniform(1.0, 2.5))))
    (tw, th), base = cv2.getTextSize(text, font, base_scale, thick)
    patch = np.zeros((th + base + 2 * thick, tw + 2 * thick), np.uint8)
    cv2.putText(patch, text, (thick, th + thick), font, base_scale, 255, thick, cv2.LINE_8)
    return patch


def _lead_marker(rng: np.random.Generator, lat: str, view: str, unit: int) -> np.ndarray:
    """A lead marker: saturated rectangle with dark letters and a sharp border (0/1/2: air/dark/bright)."""
    text = rng.choice([f"{lat}{view}", f"{lat} {view}", f"{lat}-{view}", lat])
    letters = _text_patch(rng, str(text), unit)
    pad = max(2, unit // 4)
    out = np.full((letters.shape[0] + 2 * pad, letters.shape[1] + 2 * pad), 2, np.uint8)
    out[pad:pad + letters.shape[0], pad:pad + letters.shape[1]][letters > 0] = 1
    return out


def _text_label(rng: np.random.Generator, unit: int, block: bool) -> np.ndarray:
    """Burned-in text lines (bright on air), or a label block (bright card, dark text)."""
    lines = [f"{rng.choice(['ID', 'PT', 'NO'])} {int(rng.integers(10000, 99999))}",
             f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1990, 2005))}",
             str(rng.choice(["MAMMO", "SCREEN", "DIAG", "HOSP A", "RAD DEPT"]))]
    n = int(rng.integers(1, 4)) if not block else int(rng.integers(2, 4))
    patches = [_text_patch(rng, line, unit) for line in lines[:n]]
    w = max(p.shape[1] for p in patches)
    text = np.zeros((sum(p.shape[0] for p in patches), w), np.uint8)
    y = 0
    for p in patches:
        text[y:y + p.shape[0], :p.shape[1]] = p
        y += p.shape[0]
    if not block:
        return (text > 0).astype(np.uint8) * 2
    pad = max(3, unit // 3)
    out = np.full((text.shape[0] + 2 * pad, text.shape[1] + 2 * pad), 2, np.uint8)
    out[pad:pad + text.shape[0], pad:pad + text.shape[1]][text > 0] = 1
    return out


def _place(rng: np.random.Generator, patch_hw: tuple[int, int], box: tuple[int, int, int, int],
           breast: np.ndarray, chest_left: bool, gap: int, taken: np.ndarray
           ) -> tuple[int, int] | None:
    """Top-left corner for a patch outside the breast box, ``gap`` pixels from it; None if none fits.

    The patch goes beside the nipple side of the box, above it or below it; with a gap of 0 it is
    slid along the box edge to where the breast reaches that edge, so that it touches the outline.
    """
    h, w = breast.shape
    ph, pw = patch_hw
    bx0, by0, bx1, by1 = box
    sides = ["nipple", "above", "below"]
    rng.shuffle(sides)
    for side in sides:
        if side == "nipple":
            x = bx1 + gap if chest_left else bx0 - gap - pw
            if x < 0 or x + pw > w:
                continue
            rows = np.flatnonzero(breast[:, bx1 - 1] if chest_left else breast[:, bx0])
            y = int(rng.choice(rows)) - ph // 2 if gap == 0 and rows.size else int(rng.integers(0, max(1, h - ph)))
        else:
            y = by0 - gap - ph if side == "above" else by1 + gap
            if y < 0 or y + ph > h:
                continue
            cols = np.flatnonzero(breast[by0] if side == "above" else breast[by1 - 1])
            x = int(rng.choice(cols)) - pw // 2 if gap == 0 and cols.size else int(rng.integers(0, max(1, w - pw)))
        x, y = int(np.clip(x, 0, w - pw)), int(np.clip(y, 0, h - ph))
        inside = x < bx1 and x + pw > bx0 and y < by1 and y + ph > by0
        if not inside and not taken[y:y + ph, x:x + pw].any():
            return x, y
    return None


def film_image(seed: int, index: int, image_size: tuple[int, int] = (1520, 912), *,
               n_artefacts: tuple[int, int] = (2, 6), gaps: tuple[float, ...] = GAPS) -> FilmImage:
    """One film-style mammogram (seeded by ``(seed, index)``) with breast and marker ground truth.

    Args:
        seed, index: The image's random stream is ``np.random.default_rng([seed, index, 7])``.
        image_size: ``(H, W)``.
        n_artefacts: Range (inclusive) of the number of artefacts drawn.
        gaps: Gaps to the breast box to draw from, as fractions of the width (:data:`GAPS`).

    Returns:
        The image, the breast and marker masks, view, laterality and the artefacts drawn. Views and
        sides alternate with ``index`` (LCC, LMLO, RCC, RMLO, ...), so every 4 images cover all.
    """
    import cv2

    rng = np.random.default_rng([seed, index, 7])
    h, w = image_size
    view = ("CC", "MLO")[index % 2]
    lat = ("L", "R")[(index // 2) % 2]
    shape = sample_breast_shape(rng, sample_patient_shape(rng))
    geom = build_view(shape, view, image_size)
    img, _ = render_breast(geom, rng, float(rng.uniform(0.1, 0.6)), image_size)
    img = np.where(geom.mask, img, 0.0).astype(np.float32)
    # Film base and fog: the air is not black on a digitized film.
    img += np.float32(rng.uniform(0.0, 0.05))
    spacing = pixel_spacing(image_size)
    profile = sample_profile(rng)
    raw = acquire(img, profile, rng, 0.5 * (spacing[0] + spacing[1]))
    breast = geom.mask
    if lat == "R":
        raw, breast = raw[:, ::-1], breast[:, ::-1]
    raw, breast = np.ascontiguousarray(raw), np.ascontiguousarray(breast)
    chest_left = lat == "L"
    bright = int(profile.max_value)
    box = _bbox(breast)
    markers = np.zeros((h, w), bool)
    taken = np.zeros((h, w), bool)
    kinds: list[tuple[str, int]] = []
    boxes: list[tuple[int, int, int, int]] = []
    unit = max(8, int(h * rng.uniform(0.012, 0.03)))
    for _ in range(int(rng.integers(n_artefacts[0], n_artefacts[1] + 1))):
        kind = ARTEFACTS[int(rng.integers(len(ARTEFACTS)))]
        gap = int(round(float(rng.choice(np.asarray(gaps))) * w))
        if kind in ("film_edge", "scanner_strip"):
            drawn = _strip(rng, kind, raw, markers, box, chest_left, gap, bright)
            if drawn is not None:
                kinds.append((kind, gap))
                boxes.append(drawn)
            continue
        if kind == "lead_marker":
            patch = _lead_marker(rng, lat, view, unit)
        else:
            patch = _text_label(rng, unit, block=kind == "label_block")
        at = _place(rng, patch.shape, box, breast, chest_left, gap, taken)
        if at is None:
            continue
        x, y = at
        ph, pw = patch.shape
        region = raw[y:y + ph, x:x + pw]
        region[patch == 2] = bright
        region[patch == 1] = int(bright * rng.uniform(0.0, 0.15))
        markers[y:y + ph, x:x + pw] |= patch == 2
        taken[max(0, y - 4):y + ph + 4, max(0, x - 4):x + pw + 4] = True
        kinds.append((kind, gap))
        boxes.append((x, y, x + pw, y + ph))
    # Scanner blur: the digitizer's point spread softens every edge a little (markers included).
    raw = cv2.GaussianBlur(raw, (0, 0), 0.7)
    return FilmImage(image=raw, breast=breast, markers=markers, view=view, laterality=lat, kinds=tuple(kinds),
                     boxes=tuple(boxes))


def _strip(rng: np.random.Generator, kind: str, raw: np.ndarray, markers: np.ndarray,
           box: tuple[int, int, int, int], chest_left: bool, gap: int, bright: int
           ) -> tuple[int, int, int, int] | None:
    """A film edge (a strip along a border the breast does not touch) or a scanner strip (a thin line).

    Both run the full length of the image and stay outside the breast box. Film edges are bright
    (unexposed film) or dark; only bright ones go into the marker mask (a dark one is background).

    Returns:
        The strip's rectangle ``(x0, y0, x1, y1)``, or None when none fits.
    """
    h, w = raw.shape
    bx0, by0, bx1, by1 = box
    if kind == "film_edge":
        width = max(2, int(rng.uniform(0.005, 0.03) * min(h, w)))
        free = {"nipple": w - bx1 if chest_left else bx0, "top": by0, "bottom": h - by1}
        # A gap of 0 widens the strip up to the breast box (when that is still a strip), so it
        # touches the outline; otherwise the strip keeps ``gap`` pixels from the box.
        sizes = {side: (d if gap == 0 and d <= 0.06 * min(h, w) else min(width, d - max(gap, 1)))
                 for side, d in free.items()}
        options = sorted(side for side, size in sizes.items() if size >= 2)
        if not options:
            return None
        side = options[int(rng.integers(len(options)))]
        size = sizes[side]
        if side == "nipple":
            rect = (w - size, 0, w, h) if chest_left else (0, 0, size, h)
        else:
            rect = (0, 0, w, size) if side == "top" else (0, h - size, w, h)
        sl = (slice(rect[1], rect[3]), slice(rect[0], rect[2]))
        dark = rng.random() < 0.3
        raw[sl] = 0 if dark else bright
        if not dark:
            markers[sl] = True
        return rect
    # Scanner strip: a thin line of constant offset, vertical beyond the nipple or horizontal above/below.
    thick = max(1, int(rng.uniform(0.001, 0.004) * w))
    level = int(bright * rng.uniform(0.5, 1.0))
    free_x = (bx1 + gap, w - thick) if chest_left else (0, bx0 - gap - thick)
    if free_x[1] > free_x[0]:
        x = int(rng.integers(free_x[0], free_x[1] + 1))
        raw[:, x:x + thick] = np.maximum(raw[:, x:x + thick], level)
        markers[:, x:x + thick] = True
        return x, 0, x + thick, h
    if by0 - gap - thick > 0:
        y = int(rng.integers(0, by0 - gap - thick + 1))
        raw[y:y + thick] = np.maximum(raw[y:y + thick], level)
        markers[y:y + thick] = True
        return 0, y, w, y + thick
    return None
