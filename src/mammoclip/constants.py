"""Named constants with their provenance.

Every number that describes the original Mammo-CLIP system lives here once (see
``docs/original.md``); code imports these names instead of typing the numbers.
"""

from __future__ import annotations

# --- Image geometry -------------------------------------------------------------------------------
#: Paper input size, (height, width). docs/original.md §1 step 6: PNGs are resized to 912 (W) x 1520 (H).
PAPER_IMAGE_SIZE: tuple[int, int] = (1520, 912)

#: Paper pixel statistics applied after per-image min-max to [0, 1] (docs/original.md §5 "normalisation").
PAPER_PIXEL_MEAN: float = 0.3089279
PAPER_PIXEL_STD: float = 0.25053555408335154

#: Paper preprocessing: border cropped on every side before anything else (docs/original.md §1 step 2).
PAPER_BORDER_CROP: int = 5
#: Paper preprocessing: 8-bit threshold used by the breast-crop heuristic (docs/original.md §1 step 5).
PAPER_CROP_THRESHOLD: int = 40
#: Paper preprocessing: central band used by the breast-crop heuristic (fraction of the extent).
PAPER_CROP_BAND: float = 0.8

# --- Text ------------------------------------------------------------------------------------------
#: Maximum token length of the text encoder (docs/original.md §2.4).
TEXT_MAX_LENGTH: int = 256
#: Initial CLIP temperature; logit_scale is initialised to ln(1/0.07) (docs/original.md §3 "Temperature").
INIT_TEMPERATURE: float = 0.07
#: Upper bound on exp(logit_scale), as in CLIP (the original does not clamp; we do).
MAX_LOGIT_SCALE: float = 100.0
#: Projection (joint embedding) dimension of the paper models.
PAPER_EMBED_DIM: int = 512

# --- Loss ------------------------------------------------------------------------------------------
#: Image-image (view1 <-> view2) term weight (docs/original.md §4).
I2I_WEIGHT: float = 1.0
#: Text-text (caption1 <-> caption2) term weight (docs/original.md §4).
T2T_WEIGHT: float = 0.5

# --- Label vocabularies ----------------------------------------------------------------------------
LATERALITIES: tuple[str, ...] = ("L", "R")
VIEWS: tuple[str, ...] = ("CC", "MLO", "ML", "LM", "LMO", "AT", "XCCL", "XCCM")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DENSITIES: tuple[str, ...] = ("A", "B", "C", "D")
BIRADS_CATEGORIES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
#: Binary finding labels carried by the manifest (nullable 0/1 columns).
BINARY_LABELS: tuple[str, ...] = ("mass", "calcification", "distortion", "asymmetry", "malignant")

#: The ten VinDr-Mammo finding categories (docs/original.md §2.3), in the order the original uses.
VINDR_FINDINGS: tuple[str, ...] = (
    "Mass",
    "Suspicious Calcification",
    "Architectural Distortion",
    "Global Asymmetry",
    "Focal Asymmetry",
    "Asymmetry",
    "Suspicious Lymph Node",
    "Nipple Retraction",
    "Skin Retraction",
    "Skin Thickening",
)
