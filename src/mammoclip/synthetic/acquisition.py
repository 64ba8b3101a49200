"""Acquisition profiles: per-study detector/vendor settings that make "sites" differ.

A profile turns the rendered intensity (air 0, dense tissue ~0.7, calcium ~1) into detector
values: focal-spot/detector blur, a gamma (the vendor's processing curve), gain and offset,
quantum (signal-dependent) and electronic noise, quantisation to 12-16 bits. Vendors are fictional;
their ranges are chosen so that intensity histograms differ clearly between sites, as they do
between the scanners in RSNA/VinDr, which is what robustness tests need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rendered intensity above which values are compressed smoothly toward 1 (see :func:`acquire`).
KNEE = 0.75


@dataclass(frozen=True)
class Vendor:
    """A fictional vendor: the ranges its studies' settings are drawn from."""

    name: str
    model: str
    bits: tuple[int, ...]  # possible BitsStored
    gamma: tuple[float, float]
    gain: tuple[float, float]  # fraction of the full range reached by intensity 1
    offset: tuple[float, float]  # background level, fraction of the full range
    noise: tuple[float, float]  # quantum noise scale
    blur_mm: tuple[float, float]
    monochrome1: float  # share of studies stored as MONOCHROME1 (DICOM)
    voi_lut: float  # share of studies with a VOI LUT Sequence instead of windowing only


#: The vendor registry; a study draws one uniformly.
VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("Aurora Imaging", "AuroraMammo 3D", (12,), (0.85, 1.0), (0.80, 0.92), (0.00, 0.02),
           (0.010, 0.016), (0.05, 0.10), 0.0, 0.3),
    Vendor("Borealis Medical", "Borealis DR-M", (14,), (1.0, 1.2), (0.70, 0.85), (0.02, 0.05),
           (0.006, 0.012), (0.08, 0.14), 0.3, 0.2),
    Vendor("Cygnus Systems", "Cygnus FFDM 2", (16,), (0.9, 1.1), (0.55, 0.75), (0.01, 0.03),
           (0.004, 0.008), (0.06, 0.12), 0.0, 0.5),
    Vendor("Delta Radiology", "DeltaView M", (12, 14), (1.1, 1.3), (0.85, 0.95), (0.03, 0.06),
           (0.012, 0.020), (0.10, 0.16), 0.5, 0.0),
)}


@dataclass(frozen=True)
class AcquisitionProfile:
    """The settings of one study (all its four images)."""

    vendor: str
    model: str
    bits: int
    gamma: float
    gain: float
    offset: float
    noise: float
    blur_mm: float
    monochrome1: bool
    voi_lut: bool

    @property
    def max_value(self) -> int:
        """Largest stored value (``2**bits - 1``)."""
        return 2**self.bits - 1


def sample_profile(rng: np.random.Generator) -> AcquisitionProfile:
    """Draw a vendor and the study's settings within its ranges."""
    names = sorted(VENDORS)
    v = VENDORS[names[int(rng.integers(len(names)))]]
    return AcquisitionProfile(
        vendor=v.name, model=v.model,
        bits=int(v.bits[int(rng.integers(len(v.bits)))]),
        gamma=float(rng.uniform(*v.gamma)), gain=float(rng.uniform(*v.gain)),
        offset=float(rng.uniform(*v.offset)), noise=float(rng.uniform(*v.noise)),
        blur_mm=float(rng.uniform(*v.blur_mm)),
        monochrome1=bool(rng.random() < v.monochrome1), voi_lut=bool(rng.random() < v.voi_lut),
    )


def acquire(image: np.ndarray, profile: AcquisitionProfile, rng: np.random.Generator,
            spacing_mm: float) -> np.ndarray:
    """Detector values of a rendered image (presentation polarity: tissue bright).

    Args:
        image: (H, W) float32 rendered intensity, roughly in [0, 1].
        profile: The study's acquisition profile.
        spacing_mm: Pixel size, to express the blur in mm.

    Returns:
        (H, W) uint16 with values in ``[0, 2**bits - 1]``.
    """
    import cv2

    # Soft knee instead of a hard clip: dense tissue plus a lesion can exceed 1, and a hard clip
    # would flatten a calcification on dense tissue to the same value as its surroundings.
    img = np.maximum(image, 0.0).astype(np.float32)
    over = img > KNEE
    img[over] = KNEE + (1.0 - KNEE) * np.tanh((img[over] - KNEE) / (1.0 - KNEE))
    sigma = profile.blur_mm / spacing_mm
    if sigma >= 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # Gamma through a 14-bit lookup table: several times faster than a float power per pixel.
    lut = (np.linspace(0.0, 1.0, 16384, dtype=np.float64) ** profile.gamma).astype(np.float32)
    img = lut[np.rint(np.clip(img, 0.0, 1.0) * 16383.0).astype(np.int32)]
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    img = img + noise * (profile.noise * cv2.sqrt(img + np.float32(0.02)))
    full = profile.max_value
    raw = (profile.offset + profile.gain * img) * full
    return np.clip(np.rint(raw), 0, full).astype(np.uint16)


def window(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Window (center, width) that spans the breast's values, as a reading station would set it."""
    vals = raw[mask][:: max(1, int(mask.sum() // 50000))] if mask.any() else raw.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.8])
    width = max(float(hi - lo) * 1.1, 16.0)
    return float((lo + hi) / 2), width


def to_display(raw: np.ndarray, bits: int) -> np.ndarray:
    """The processed PNG image: detector values scaled so that the brightest pixel is full range.

    Like the paper's preprocessing (min-max scaling of the breast image) but without removing the
    background offset, so that sites still differ in background level, gamma, noise and blur.

    Args:
        raw: (H, W) uint16 detector values.
        bits: 8 (uint8 output) or 16 (uint16 output).
    """
    top = float(raw.max()) or 1.0
    full = 255.0 if bits == 8 else 65535.0
    scaled = np.rint(raw.astype(np.float32) * (full / top))
    return np.clip(scaled, 0, full).astype(np.uint8 if bits == 8 else np.uint16)
