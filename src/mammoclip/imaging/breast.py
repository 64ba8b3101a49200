"""Breast segmentation, crop, flip, resize/pad, and the transform record that maps coordinates.

The original pipeline (docs/original.md §1) crops with a row/column-std heuristic that breaks on film
labels, markers and bright borders. Here the breast is the largest connected component of an Otsu
threshold on a downsampled copy, after a morphological opening that cuts thin structures (frame
lines, label strokes) from the breast; the component is grown back by the same radius inside the
threshold mask, so the skin line is kept. The side the breast touches (the chest wall) is the side
with more breast pixels.

Every geometric step is recorded in a :class:`TransformRecord`, so boxes and masks move between the
original DICOM grid and the processed image in both directions. Coordinates are continuous pixel
coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, the image spans ``[0, W] x [0, H]``
(the convention OpenCV's resize uses). A point maps as

    crop:  x1 = x - crop_x0                     (crop keeps columns crop_x0 .. crop_x1-1)
    flip:  x2 = (crop_x1 - crop_x0) - x1        (only when flipped)
    scale: x3 = x2 * scale_x
    pad:   x4 = x3 + pad_left

and the same for ``y`` without the flip. The inverse runs the steps backwards.

Array transforms (:class:`BreastPreprocess`) come with a thin dictionary wrapper
(:class:`BreastPreprocessd`) in the MONAI style (docs/architecture.md, design rule 6). Layer 0: numpy + cv2 (lazy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mammoclip.constants import PAPER_BORDER_CROP, PAPER_CROP_BAND, PAPER_CROP_THRESHOLD
from mammoclip.errors import ConfigError

#: Longest side of the downsampled copy used for segmentation (speed; ~10x fewer pixels than 1520).
SEGMENT_MAX_SIDE: int = 512
#: Opening/regrowth radius as a fraction of the downsampled longest side (cuts lines thinner than
#: ~2 % of the image, e.g. film frame edges and label strokes touching the breast).
SEGMENT_OPEN_FRACTION: float = 0.012
#: Margin added around the breast box, fraction of the original size (keeps the skin line).
CROP_MARGIN_FRACTION: float = 0.01

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")
FLIP_TARGETS: tuple[str, ...] = ("left", "none")


@dataclass(frozen=True)
class TransformRecord:
    """Geometry applied to one image: original size, crop box, flip, scale, padding, final size.

    Field names are the manifest's ``TRANSFORM_COLUMNS``. ``flipped`` mirrors the crop horizontally.
    """

    orig_height: int
    orig_width: int
    crop_x0: int
    crop_y0: int
    crop_x1: int
    crop_y1: int
    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    flipped: bool
    height: int
    width: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TransformRecord:
        """Rebuild a record from a manifest row (or any mapping with the column names)."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            value = row[f.name]
            if f.name == "flipped":
                kw[f.name] = bool(int(value)) if not isinstance(value, str) else value.lower() in ("1", "true")
            elif f.name.startswith("scale"):
                kw[f.name] = float(value)
            else:
                kw[f.name] = int(value)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The record as manifest columns (``flipped`` as 0/1)."""
        d = asdict(self)
        d["flipped"] = int(self.flipped)
        return d

    @property
    def crop_width(self) -> int:
        return self.crop_x1 - self.crop_x0

    @property
    def crop_height(self) -> int:
        return self.crop_y1 - self.crop_y0

    def map_points(self, xy: np.ndarray, *, inverse: bool = False) -> np.ndarray:
        """Map ``(N, 2)`` points (x, y) original -> processed, or back with ``inverse=True``."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0].copy(), xy[:, 1].copy()
        if not inverse:
            x, y = x - self.crop_x0, y - self.crop_y0
            if self.flipped:
                x = self.crop_width - x
            x, y = x * self.scale_x + self.pad_left, y * self.scale_y + self.pad_top
        else:
            x, y = (x - self.pad_left) / self.scale_x, (y - self.pad_top) / self.scale_y
            if self.flipped:
                x = self.crop_width - x
            x, y = x + self.crop_x0, y + self.crop_y0
        return np.stack([x, y], axis=1)

    def map_boxes(self, boxes: np.ndarray, *, inverse: bool = False, clip: bool = True) -> np.ndarray:
        """Map ``(N, 4)`` boxes ``xmin, ymin, xmax, ymax`` between the grids.

        Forward, boxes are first clipped to the crop (a box outside it collapses to zero area).
        A flip swaps ``xmin``/``xmax``; the result is re-ordered so ``xmin <= xmax``.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if clip and not inverse:
            boxes = boxes.copy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(self.crop_x0, self.crop_x1)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(self.crop_y0, self.crop_y1)
        p0 = self.map_points(boxes[:, :2], inverse=inverse)
        p1 = self.map_points(boxes[:, 2:], inverse=inverse)
        out = np.concatenate([np.minimum(p0, p1), np.maximum(p0, p1)], axis=1)
        if clip and inverse:
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_width)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_height)
        return out

    def apply(self, image: np.ndarray, *, interpolation: str = "area", fill: float = 0) -> np.ndarray:
        """Apply the geometry to an original-grid array (image or mask).

        Args:
            interpolation: ``area`` (images; what the paper uses), ``linear`` or ``nearest`` (masks).
        """

        if image.shape[:2] != (self.orig_height, self.orig_width):
            raise ValueError(f"array of shape {image.shape} does not match the record's original size "
                             f"{(self.orig_height, self.orig_width)}")
        return self.apply_cropped(image[self.crop_y0:self.crop_y1, self.crop_x0:self.crop_x1],
                                  interpolation=interpolation, fill=fill)

    def apply_cropped(self, crop: np.ndarray, *, interpolation: str = "area", fill: float = 0) -> np.ndarray:
        """Flip, resize and pad an array that is already the crop (saves copying the full frame)."""
        import cv2

        if crop.shape[:2] != (self.crop_height, self.crop_width):
            raise ValueError(f"crop of shape {crop.shape} does not match the record's crop "
                             f"{(self.crop_height, self.crop_width)}")
        is_bool = crop.dtype == bool
        nw = round(self.crop_width * self.scale_x)
        nh = round(self.crop_height * self.scale_y)
        if interpolation == "area" and crop.dtype == np.float32:
            # The flip is folded into the resize weights: the big crop is never copied to reverse it.
            resized = resize_area(crop, nw, nh, flip=self.flipped)
            if (nh, nw) == (self.height, self.width):
                return resized
        else:
            if self.flipped:
                crop = crop[:, ::-1]
            src = np.ascontiguousarray(crop.astype(np.uint8) if is_bool else crop)
            resized = cv2.resize(src, (nw, nh), interpolation=_INTERP[interpolation]())
        out = np.full((self.height, self.width), fill, dtype=resized.dtype)
        out[self.pad_top:self.pad_top + nh, self.pad_left:self.pad_left + nw] = resized
        return out.astype(bool) if is_bool else out

    def invert(self, processed: np.ndarray, *, interpolation: str = "nearest", fill: float = 0) -> np.ndarray:
        """Map a processed-grid array (e.g. a predicted mask) back onto the original grid."""
        import cv2

        nw = round(self.crop_width * self.scale_x)
        nh = round(self.crop_height * self.scale_y)
        src = processed[self.pad_top:self.pad_top + nh, self.pad_left:self.pad_left + nw]
        is_bool = src.dtype == bool
        src = np.ascontiguousarray(src.astype(np.uint8) if is_bool else src)
        crop = cv2.resize(src, (self.crop_width, self.crop_height), interpolation=_INTERP[interpolation]())
        if self.flipped:
            crop = crop[:, ::-1]
        out = np.full((self.orig_height, self.orig_width), fill, dtype=crop.dtype)
        out[self.crop_y0:self.crop_y1, self.crop_x0:self.crop_x1] = crop
        return out.astype(bool) if is_bool else out


def _cv2_flag(name: str) -> Callable[[], int]:
    def flag() -> int:
        import cv2

        return int(getattr(cv2, name))

    return flag


_INTERP: dict[str, Callable[[], int]] = {
    "area": _cv2_flag("INTER_AREA"),
    "linear": _cv2_flag("INTER_LINEAR"),
    "nearest": _cv2_flag("INTER_NEAREST"),
}


@functools.lru_cache(maxsize=64)
def _area_weights(src_size: int, dst_size: int, *, reverse: bool = False) -> Any:
    """Sparse ``(dst_size, src_size)`` matrix of OpenCV's INTER_AREA weights along one axis.

    Cached: a batch sees few distinct sizes (the output size is fixed; crops vary, the segmentation
    copy of one detector size does not), and building the matrix costs ~0.1 ms per axis. The
    matrices are only ever read.

    A port of OpenCV's ``computeResizeAreaTab`` (imgproc/resize.cpp), including its 1e-3 cut-off of
    tiny partial overlaps, so the result matches ``cv2.resize(..., INTER_AREA)`` to float rounding.
    ``reverse`` numbers the outputs backwards: resizing and mirroring in one product (the weights
    of a mirrored input are the mirrored weights).
    """
    from scipy.sparse import csr_matrix

    scale = 1.0 / (dst_size / src_size)  # OpenCV's scale_x = 1 / inv_scale_x, in double
    dx = np.arange(dst_size, dtype=np.float64)
    fsx1 = dx * scale
    fsx2 = fsx1 + scale
    cell = np.minimum(scale, src_size - fsx1)
    sx2 = np.minimum(np.floor(fsx2), src_size - 1)
    sx1 = np.minimum(np.ceil(fsx1), sx2)
    left = sx1 - fsx1 > 1e-3  # partial source pixel before the first whole one
    right = fsx2 - sx2 > 1e-3  # partial source pixel after the last whole one
    counts = (sx2 - sx1).astype(np.int64)  # whole source pixels per output pixel
    mid_rows = np.repeat(np.arange(dst_size), counts)
    starts = np.cumsum(counts) - counts
    mid_cols = sx1[mid_rows].astype(np.int64) + (np.arange(int(counts.sum())) - starts[mid_rows])
    rows = np.concatenate([np.flatnonzero(left), mid_rows, np.flatnonzero(right)])
    cols = np.concatenate([(sx1[left] - 1).astype(np.int64), mid_cols, sx2[right].astype(np.int64)])
    vals = np.concatenate([((sx1 - fsx1) / cell)[left], (1.0 / cell)[mid_rows],
                           (np.minimum(np.minimum(fsx2 - sx2, 1.0), cell) / cell)[right]])
    if reverse:
        rows = dst_size - 1 - rows
    return csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(dst_size, src_size))


def resize_area(image: np.ndarray, width: int, height: int, *, flip: bool = False,
                transposed: bool = False) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=INTER_AREA)`` in float32, ~3x faster.

    OpenCV's area resize is vectorised only for integer factors; for the usual case (a breast crop
    of any size down to 1520 x 912) it runs a scalar loop that made resizing the slowest
    non-codec stage. Here each pass is a sparse matrix product with OpenCV's own weights (every
    output row is a weighted sum of 2-3 contiguous input rows, which scipy does row by row at
    memory speed); the horizontal pass runs on the transposed, already shortened image. The
    result equals OpenCV's up to float32 rounding (~1e-7 relative). Integer factors and upscaling
    go straight to OpenCV (its fast path, and its different upscaling rule).

    Args:
        image: ``(H, W)`` array, any real dtype (converted to float32).
        width, height: Output size.
        flip: Mirror the result horizontally (free: folded into the weights).
        transposed: Return the result transposed, ``(width, height)``: the layout the horizontal
            pass produces, so a caller that goes on with elementwise work (window, cast) can do it
            there and transpose a smaller 8/16-bit array instead of this float32 one.

    Returns:
        ``(height, width)`` float32 (``(width, height)`` when ``transposed``), C-contiguous, always a
        new array (same size goes through OpenCV), so callers may modify it in place.
    """
    import cv2

    h, w = image.shape
    src = np.asarray(image, dtype=np.float32)
    if height > h or width > w or (h % height == 0 and w % width == 0):
        src = np.ascontiguousarray(src[:, ::-1] if flip else src)  # upscaling is not mirror-symmetric
        out = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)
        return cv2.transpose(out) if transposed else out
    src = np.ascontiguousarray(src)
    if height != h:
        src = _area_weights(h, height) @ src  # (height, W)
    if width == w and not flip:
        return cv2.transpose(src) if transposed else src
    out_t = _area_weights(w, width, reverse=flip) @ cv2.transpose(src)  # (width, height)
    return out_t if transposed else cv2.transpose(out_t)


def map_codes(codes: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """Values of integer ``codes`` as float32: ``lut[codes]`` (or the codes themselves without a LUT).

    A gather through a 65536-entry table runs at ~0.4 GB/s, ~8x slower than a cast. The usual DICOM
    value pipeline (rescale, MONOCHROME1 inversion) is affine, so when the LUT is exactly
    ``float32(code) * a + b`` for every code, that arithmetic gives the very same values (same
    float32 operations per element) at cast speed; any other LUT is gathered.
    """
    if lut is None:
        return np.asarray(codes, dtype=np.float32)
    a, b = lut[1] - lut[0], lut[0]
    ramp = np.arange(lut.size, dtype=np.float32)
    ramp *= a
    ramp += b
    if not np.array_equal(ramp, lut):
        return lut[codes]
    out = codes.astype(np.float32)
    out *= a
    out += b
    return out


@dataclass(frozen=True)
class Segmentation:
    """The breast found in one image: a box in original pixels and the chest-wall side."""

    x0: int
    y0: int
    x1: int
    y1: int
    chest_wall: str  # "left" | "right"
    mask_small: np.ndarray  # (h, w) bool, the downsampled breast mask


def _to_uint8(small: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(small, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _largest_component(binary: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Label image and label of the largest 8-connected component of a 0/1 uint8 image (None: empty).

    Areas come from a ``bincount`` of the labels: ``connectedComponentsWithStats`` computes the same
    areas (and boxes and centroids nobody reads) at ~6x the cost of the labelling itself. Same
    labelling algorithm, same labels, and ``argmax`` breaks ties towards the lower label as before.
    """
    import cv2

    n, labels = cv2.connectedComponents(binary, connectivity=8)  # labels: (h, w) int32
    if n <= 1:
        return None
    areas = np.bincount(labels.ravel(), minlength=n)
    return labels, 1 + int(np.argmax(areas[1:]))


def segment_breast(image: np.ndarray, *, max_side: int = SEGMENT_MAX_SIDE,
                   margin: float = CROP_MARGIN_FRACTION, lut: np.ndarray | None = None) -> Segmentation:
    """Find the breast: Otsu threshold + opening + largest component + regrowth, on a small copy.

    Args:
        image: ``(H, W)`` image, bright = dense (MONOCHROME1 already inverted), any dtype.
        max_side: Longest side of the downsampled copy.
        margin: Margin added to the box, as a fraction of the original height/width.
        lut: When given, ``image`` holds integer codes and the pixel values are ``lut[image]``
            (see :func:`mammoclip.imaging.dicom.decode_dicom`); only the subsampled pixels are mapped.

    Returns:
        The breast box (``x1``/``y1`` exclusive) in original pixels and the chest-wall side. An image
        with no foreground gives the full frame.
    """
    import cv2

    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    sw, sh = max(1, round(w * f)), max(1, round(h * f))
    # Subsample with a stride first (a view, no copy) so the area resize reads ~4x fewer pixels:
    # segmentation needs the shape, not every pixel, and this halves the stage on 13 MP images.
    stride = max(1, int(1 / (2 * f)))
    sub = image[::stride, ::stride]
    small = resize_area(map_codes(sub, lut), sw, sh)
    u8 = _to_uint8(small)
    thr, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu splits background from dense tissue; the fatty skin edge sits between, so lower it.
    # Every mask below is uint8 0/1 (cv2 works on it in place of numpy bool temporaries); on a
    # uint8 image ``u8 > t`` is ``u8 > floor(t)``, which is what cv2.threshold computes.
    _, fg = cv2.threshold(u8, max(1.0, 0.5 * thr), 1, cv2.THRESH_BINARY)
    r = max(1, round(SEGMENT_OPEN_FRACTION * max(sh, sw)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    core = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    largest = _largest_component(core)
    if largest is None:
        core = fg
        largest = _largest_component(core)
    if largest is None:
        return Segmentation(0, 0, w, h, "left", np.ones((sh, sw), dtype=bool))
    labels, label = largest
    comp = (labels == label).view(np.uint8)  # (sh, sw) uint8 0/1 (bool bytes, no copy)
    mask = cv2.bitwise_and(cv2.dilate(comp, kernel), fg)  # (sh, sw) uint8 0/1
    bx, by, bw, bh = cv2.boundingRect(mask)  # box of the nonzero pixels, exclusive end = bx + bw
    # Back to original pixels (each small pixel covers 1/f original pixels), plus the margin.
    mx, my = margin * w, margin * h
    x0 = max(0, int(np.floor(bx / f - mx)))
    x1 = min(w, int(np.ceil((bx + bw) / f + mx)))
    y0 = max(0, int(np.floor(by / f - my)))
    y1 = min(h, int(np.ceil((by + bh) / f + my)))
    half = sw // 2
    left_area = cv2.countNonZero(mask[:, :half]) if half else 0
    right_area = cv2.countNonZero(mask[:, sw - half:]) if half else 0
    side = "left" if left_area >= right_area else "right"
    mask = mask.view(bool)  # 0/1 bytes are valid bools: no copy
    return Segmentation(x0, y0, x1, y1, side, mask)


def plan_transform(
    orig_shape: tuple[int, int],
    crop: tuple[int, int, int, int],
    size: tuple[int, int],
    *,
    resize: str = "stretch",
    flip: bool = False,
    anchor: str = "left",
) -> TransformRecord:
    """Compute the record for a crop, an optional flip and a resize to ``size`` = (H, W).

    Args:
        orig_shape: Original ``(H, W)``.
        crop: ``(x0, y0, x1, y1)``, exclusive ends.
        resize: ``stretch`` (aspect not kept, as in the paper) or ``pad`` (aspect kept, zero padding).
        flip: Mirror the crop horizontally.
        anchor: With ``pad``, the side the image is placed against (the chest wall after the flip).
    """
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    x0, y0, x1, y1 = (int(v) for v in crop)
    cw, ch = x1 - x0, y1 - y0
    if cw <= 0 or ch <= 0:
        raise ValueError(f"empty crop {crop}")
    out_h, out_w = size
    if resize == "stretch":
        nw, nh = out_w, out_h
    else:
        s = min(out_h / ch, out_w / cw)
        nw, nh = min(out_w, max(1, round(cw * s))), min(out_h, max(1, round(ch * s)))
    pad_left = 0 if (resize == "stretch" or anchor == "left") else out_w - nw
    pad_top = (out_h - nh) // 2
    return TransformRecord(
        orig_height=int(orig_shape[0]), orig_width=int(orig_shape[1]),
        crop_x0=x0, crop_y0=y0, crop_x1=x1, crop_y1=y1,
        scale_x=nw / cw, scale_y=nh / ch, pad_left=pad_left, pad_top=pad_top,
        flipped=bool(flip), height=out_h, width=out_w,
    )


# --- intensity windows (image in float, bright = dense -> [0, 1]) ------------------------------

def _window_minmax(region: np.ndarray) -> tuple[float, float]:
    if region.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        import cv2

        lo, hi, _, _ = cv2.minMaxLoc(region)  # one pass over a strided view, ~4x numpy's min + max
        return float(lo), float(hi)
    return float(region.min()), float(region.max())


def _window_percentile(region: np.ndarray) -> tuple[float, float]:
    # Percentiles sort; ~1 M strided samples estimate them to well under a grey level, 10x faster.
    stride = max(1, int(np.sqrt(region.size / 1e6)))
    lo, hi = np.percentile(region[::stride, ::stride], (0.5, 99.5))
    return float(lo), float(hi)


#: Intensity windows computed inside the breast crop (so burned-in markers outside it do not
#: compress the breast's grey levels). ``voi`` is handled at decode time (the DICOM's own window).
WINDOWS: dict[str, Callable[[np.ndarray], tuple[float, float]]] = {
    "minmax": _window_minmax,
    "percentile": _window_percentile,
}


def to_unit(image: np.ndarray, lo: float, hi: float, *, inplace: bool = False) -> np.ndarray:
    """Scale to [0, 1] float32 with clipping; a flat image gives zeros.

    Args:
        inplace: Overwrite ``image`` when it is float32 (the caller owns it) instead of copying.
    """
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = image if inplace and image.dtype == np.float32 else image.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


def to_bits(unit: np.ndarray, bits: int, *, inplace: bool = False) -> np.ndarray:
    """[0, 1] float -> uint8 or uint16, rounding to nearest.

    Args:
        inplace: Scale ``unit`` in place (float32 only; the caller owns it) instead of a new array.
    """
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, got {bits}")
    if inplace and unit.dtype == np.float32:
        scaled = unit
        scaled *= np.float32(2**bits - 1)
    else:
        scaled = unit * np.float32(2**bits - 1)
    return np.rint(scaled, out=scaled).astype(np.uint8 if bits == 8 else np.uint16)


#: Dtypes whose values convert to float32 exactly, so min/max of the codes are min/max of the
#: float values: the min-max window can then read the (half as large) integer crop.
_EXACT_IN_FLOAT32: tuple[np.dtype[Any], ...] = tuple(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32))


@dataclass(frozen=True)
class BreastPreprocess:
    """Array transform: segment, crop, (flip), window, resize/pad, cast.

    ``__call__(image, window_range=None, lut=None)`` returns ``(out, record)``. ``window_range``
    fixes the intensity window (e.g. a DICOM VOI range); otherwise :data:`WINDOWS` ``[window]`` is
    computed inside the crop. With ``lut``, ``image`` holds integer codes whose values are
    ``lut[image]`` (:func:`mammoclip.imaging.dicom.decode_dicom`): only the subsampled segmentation
    input and the crop are ever mapped, never the full frame.
    """

    size: tuple[int, int]
    resize: str = "stretch"
    flip_to: str = "left"
    window: str = "minmax"
    bits: int = 8

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"size must be (H, W) with positive values, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.flip_to not in FLIP_TARGETS:
            raise ConfigError(f"flip_to must be one of {FLIP_TARGETS}, got {self.flip_to!r}")
        if self.window not in WINDOWS:
            raise ConfigError(f"window must be one of {sorted(WINDOWS)}, got {self.window!r}")
        if self.bits not in (8, 16):
            raise ConfigError(f"bits must be 8 or 16, got {self.bits}")

    def plan(self, image: np.ndarray, *, lut: np.ndarray | None = None) -> tuple[TransformRecord, Segmentation]:
        """Segment the image and compute its record without touching the pixels."""
        seg = segment_breast(image, lut=lut)
        flip = self.flip_to == "left" and seg.chest_wall == "right"
        anchor = "left" if (seg.chest_wall == "left") != flip else "right"
        record = plan_transform(image.shape, (seg.x0, seg.y0, seg.x1, seg.y1), self.size,
                                resize=self.resize, flip=flip, anchor=anchor)
        return record, seg

    def __call__(self, image: np.ndarray, window_range: tuple[float, float] | None = None, *,
                 lut: np.ndarray | None = None) -> tuple[np.ndarray, TransformRecord]:
        record, _ = self.plan(image, lut=lut)
        return self.render(image, record, window_range, lut=lut), record

    def render(self, image: np.ndarray, record: TransformRecord, window_range: tuple[float, float] | None = None,
               *, lut: np.ndarray | None = None) -> np.ndarray:
        """Crop, window, resize and cast ``image`` along a planned ``record`` (the part after :meth:`plan`)."""
        crop = image[record.crop_y0:record.crop_y1, record.crop_x0:record.crop_x1]
        if window_range is None and lut is None and self.window == "minmax" and crop.dtype in _EXACT_IN_FLOAT32:
            window_range = _window_minmax(crop)  # on the codes: same extremes, half the bytes read
        # The only full-resolution float32 array is the crop's (a view when the input already is).
        values = map_codes(crop, lut)
        lo, hi = window_range if window_range is not None else WINDOWS[self.window](values)
        # Resize the raw crop in float, then window the small result: area resizing is linear, so
        # this equals windowing first (up to where the window clips) at a fraction of the cost.
        # One cast at the very end: no wrap, one rounding.
        nw, nh = round(record.crop_width * record.scale_x), round(record.crop_height * record.scale_y)
        if (nh, nw) == (record.height, record.width) and nh < record.crop_height and nw < record.crop_width:
            # No padding (stretch), shrinking (the sparse passes, not OpenCV): work in their layout.
            import cv2

            small_t = resize_area(values, nw, nh, flip=record.flipped, transposed=True)  # (W, H)
            # Elementwise window and cast commute with the transpose: transpose the 8/16-bit result.
            return cv2.transpose(to_bits(to_unit(small_t, lo, hi, inplace=True), self.bits, inplace=True))
        small = record.apply_cropped(values, interpolation="area")
        # The area resize always returns a new array (never a view of ``image``): scale it in place.
        return to_bits(to_unit(small, lo, hi, inplace=True), self.bits, inplace=True)


@dataclass(frozen=True)
class BreastPreprocessd:
    """Dictionary wrapper: plan on ``keys[0]`` (the image), apply the same geometry to every key.

    Masks (any other key) are resized with nearest neighbour. The record is stored under
    ``"transform"``. The input dict is not modified.
    """

    transform: BreastPreprocess
    keys: Sequence[str] = ("image", "mask")

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        image_key, *others = self.keys
        out[image_key], record = self.transform(data[image_key])
        for key in others:
            if key in data:
                out[key] = record.apply(np.asarray(data[key]), interpolation="nearest")
        out["transform"] = record
        return out


# --- paper-compatible mode (docs/original.md §1 steps 2-6, reproduced exactly) ----------------------

def _count_up_continuing_ones(b_arr: np.ndarray) -> np.ndarray:
    """Run length at each True position (-1 at False), as the original computes it.

    The original's arithmetic undercounts a run that touches either end of the array by one per
    touching end; this only matters when runs tie, and is kept for exact reproduction.
    """
    left = np.arange(len(b_arr))
    left[b_arr > 0] = 0
    left = np.maximum.accumulate(left)
    rev = b_arr[::-1]
    right = np.arange(len(rev))
    right[rev > 0] = 0
    right = np.maximum.accumulate(right)
    right = len(rev) - 1 - right[::-1]
    return right - left - 1


def paper_extract_breast(img: np.ndarray, *, threshold: int = PAPER_CROP_THRESHOLD, band: float = PAPER_CROP_BAND
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's heuristic crop (docs/original.md §1 step 5) on an 8-bit image.

    Returns:
        The cropped un-thresholded image, and the kept row and column indices (several tied runs
        are all kept, so the indices need not be contiguous).
    """
    half = band / 2
    thr = np.where(img <= threshold, 0, img)
    height = thr.shape[0]
    y_a, y_b = height // 2 + int(height * half), height // 2 - int(height * half)
    cols = _count_up_continuing_ones(thr[y_b:y_a].std(axis=0) != 0)
    col_ind = np.where(cols == cols.max())[0]
    thr = thr[:, col_ind]
    width = thr.shape[1]
    x_a, x_b = width // 2 + int(width * half), width // 2 - int(width * half)
    rows = _count_up_continuing_ones(thr[:, x_b:x_a].std(axis=1) != 0)
    row_ind = np.where(rows == rows.max())[0]
    return img[row_ind][:, col_ind], row_ind, col_ind


def paper_preprocess(values: np.ndarray, monochrome1: bool, size: tuple[int, int], *, border: int = PAPER_BORDER_CROP
                     ) -> tuple[np.ndarray, TransformRecord]:
    """Reproduce the original preprocessing (docs/original.md §1 steps 2-6) on decoded values.

    Args:
        values: ``(H, W)`` values after the modality LUT, NOT inverted (dicomsdl's float32 output).
        monochrome1: The file's photometric interpretation is MONOCHROME1.
        size: Output ``(H, W)``; the paper uses 1520 x 912.
        border: Border cropped on every side first (5 in the paper).

    Returns:
        The uint8 image and its record. When tied runs make the kept rows/columns non-contiguous
        the record spans their bounding range (the crop cannot then be inverted exactly).
    """
    import cv2

    data = np.asarray(values, dtype=np.float32)[border:-border, border:-border]
    if monochrome1:
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    data = (data * 255).astype(np.uint8)
    crop, row_ind, col_ind = paper_extract_breast(data)
    out = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    x0, x1 = border + int(col_ind.min()), border + int(col_ind.max()) + 1
    y0, y1 = border + int(row_ind.min()), border + int(row_ind.max()) + 1
    record = TransformRecord(
        orig_height=int(values.shape[0]), orig_width=int(values.shape[1]),
        crop_x0=x0, crop_y0=y0, crop_x1=x1, crop_y1=y1,
        scale_x=size[1] / (x1 - x0), scale_y=size[0] / (y1 - y0), pad_left=0, pad_top=0,
        flipped=False, height=size[0], width=size[1],
    )
    return out, record
