"""Breast parenchyma: power-law fibroglandular texture, ducts/strands, fat and skin.

Mammographic "anatomical noise" has a power spectrum ``P(f) ~ 1/f^beta`` with beta close to 3
(Burgess et al., Med Phys 2001; Heine & Velthuizen, Med Phys 2002). We synthesise such a field in
the Fourier domain at a quarter of the resolution (the spectrum above that is negligible for beta
= 3) and upsample. Thresholding the field at the quantile that leaves a target fraction of the
breast dense gives a density category whose dense-tissue fraction is controlled exactly, so that
BI-RADS A-D are monotone in dense fraction by construction.
"""

from __future__ import annotations

import numpy as np

from mammoclip.synthetic.anatomy import ViewGeometry, pixel_spacing

#: Target dense-tissue fraction range per BI-RADS density category (fraction of breast area).
#: The ranges follow the quartile definitions of BI-RADS 4th edition (<25%, 25-50%, 51-75%, >75%)
#: shrunk a little so that categories do not touch.
DENSE_FRACTION: dict[str, tuple[float, float]] = {
    "A": (0.04, 0.14),
    "B": (0.20, 0.36),
    "C": (0.44, 0.60),
    "D": (0.66, 0.82),
}


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator,
                    anisotropy: float = 1.0) -> np.ndarray:
    """Gaussian random field with power spectrum ``1/f^beta``, zero mean and unit variance.

    Args:
        shape: ``(h, w)`` of the field.
        beta: Spectral exponent (3 for breast tissue).
        anisotropy: Scale of the horizontal frequency axis; < 1 stretches structures along x
            (toward the nipple in the canonical frame).
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :] / anisotropy
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=(h, w))
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _upsampled_noise(image_size: tuple[int, int], factor: int, beta: float, rng: np.random.Generator,
                     anisotropy: float = 1.0) -> np.ndarray:
    import cv2

    h, w = image_size
    small = (max(16, h // factor), max(16, w // factor))
    field = power_law_noise(small, beta, rng, anisotropy)
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)


def strands(geom: ViewGeometry, rng: np.random.Generator, n: int, image_size: tuple[int, int],
            width: int = 1, wave: float = 0.0) -> np.ndarray:
    """Curvilinear structures converging on the nipple, as a (H, W) map in [0, 1].

    Thin (``width=1``) they are ducts and Cooper's-ligament-like strands; wider and wavy
    (``width=2, wave>0``) they are the few blood vessels that cross the breast.
    """
    import cv2

    h, w = image_size
    scale = 4 if min(h, w) >= 256 else 1  # draw at reduced size; strands are smooth
    hs, ws = max(1, h // scale), max(1, w // scale)
    canvas = np.zeros((hs, ws), np.float32)
    xn, yn = geom.nipple
    for _ in range(n):
        x_end = rng.uniform(0.0, 0.35) * geom.depth
        above, below = geom.extent_at(x_end)
        y_end = yn + rng.uniform(-0.95 * above, 0.95 * below)
        t = np.linspace(0, 1, 12)
        bend = rng.normal(0, 0.08) * geom.depth
        xs = xn + (x_end - xn) * t
        ys = yn + (y_end - yn) * t + bend * np.sin(np.pi * t) + rng.normal(0, 0.004 * h, t.size).cumsum()
        ys = ys + wave * h * np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([xs / scale, ys / scale], axis=1).astype(np.int32)
        cv2.polylines(canvas, [pts], False, float(rng.uniform(0.4, 1.0)), width, cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.8)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)


def render_breast(geom: ViewGeometry, rng: np.random.Generator, dense_fraction: float,
                  image_size: tuple[int, int], shared_field: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Render the tissue of one view: intensity in [0, 1] (air 0, tissue brighter).

    Args:
        geom: The view's geometry.
        dense_fraction: Target fraction of the breast covered by fibroglandular tissue.
        shared_field: A low-frequency field shared by the patient's breasts (left/right similarity).

    Returns:
        ``(image, dense)``: the (H, W) float32 intensity and the dense-tissue map in [0, 1].
    """
    import cv2

    h, w = image_size
    sy, sx = pixel_spacing(image_size)
    mm = 0.5 * (sx + sy)
    mask = geom.mask
    field = _upsampled_noise(image_size, 4, 3.0, rng, anisotropy=0.6)
    if shared_field is not None:
        field = 0.75 * field + 0.65 * shared_field
    # Glandular tissue sits behind the nipple, away from the skin (subcutaneous fat) and the chest
    # wall (retromammary fat).
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xn, yn = geom.nipple
    above, below = geom.extent_at(0.5 * geom.depth)
    u = xs / max(geom.depth, 1.0)
    v = (ys - yn) / max(0.5 * (above + below), 1.0)
    prior = np.exp(-(((u - 0.55) / 0.38) ** 2)) * np.exp(-((v / 0.75) ** 2))  # separable: (1, W) x (H, 1)
    taper = np.clip((geom.dist * mm - 3.0) / 9.0, 0, 1) * np.clip((xs * sx - 4.0) / 12.0, 0, 1)
    taper = taper * (1.0 - geom.pectoral)
    score = field + 1.8 * prior
    allowed = mask & (taper > 0.5)
    sample = score[allowed][:: max(1, int(allowed.sum() // 60000))]
    thr = np.quantile(sample, 1.0 - dense_fraction) if sample.size else 0.0
    # cv2.exp/sqrt: SIMD float32 versions of the numpy ufuncs (this function runs per image).
    dense = 1.0 / (1.0 + cv2.exp(np.clip((thr - score) / 0.35, -50, 50).astype(np.float32)))
    dense = (dense * taper * mask).astype(np.float32)

    fine = _upsampled_noise(image_size, 2, 2.2, rng)
    fat = rng.uniform(0.26, 0.31)
    gland = rng.uniform(0.56, 0.63)
    # Fibrous detail inside the dense tissue: an elongated mid-frequency field modulates it.
    fibres = _upsampled_noise(image_size, 2, 2.6, rng, anisotropy=0.35)
    tissue = fat + (gland - fat) * dense * (1.0 + 0.22 * fine + 0.12 * fibres) + 0.02 * fine
    tissue = tissue + 0.07 * strands(geom, rng, int(rng.integers(25, 45)), image_size)
    tissue = tissue + 0.05 * strands(geom, rng, int(rng.integers(2, 5)), image_size, width=2, wave=0.012)
    # Compressed-breast thickness falls off within ~12 mm of the skin: the periphery is darker.
    r0 = 12.0 / mm
    t = np.clip(geom.dist / r0, 0, 1)
    thick = cv2.sqrt((t * (2.0 - t)).astype(np.float32))
    img = tissue * (0.42 + 0.58 * thick)
    # Skin line: a thin brighter band (~1.8 mm).
    skin = cv2.exp(-((geom.dist * (mm / 1.8)) ** 2).astype(np.float32)) * mask
    img = img + 0.10 * skin
    # Pectoral muscle (MLO): bright, smooth, brighter toward the corner.
    if geom.pectoral.any():
        corner = 1.0 - np.clip(np.sqrt((xs / w) ** 2 + (ys / h) ** 2) * 1.6, 0, 1)
        muscle = rng.uniform(0.50, 0.58) + 0.14 * corner + 0.025 * field + 0.015 * fine
        img = img + geom.pectoral * (muscle - img)
    img = np.where(mask, img, 0.0).astype(np.float32)
    return img, dense
