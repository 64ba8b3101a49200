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
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np

from mammoclip.constants import PAPER_BORDER_CROP, PAPER_CROP_BAND, PAPER_CROP_THRESHOLD
from mammoclip.errors import ConfigError

#: Longest side of the downsampled copy used for segmentation (speed; ~10x fewer pixels than 1520).
#: Every size below is a fraction of this copy (its longest side or its pixel count), never a pixel
#: count: an image smaller than this is segmented at its own size and must behave the same.
SEGMENT_MAX_SIDE: int = 512
#: Opening/regrowth radius as a fraction of the downsampled longest side (cuts lines thinner than
#: ~2 % of the image, e.g. film frame edges and label strokes touching the breast).
SEGMENT_OPEN_FRACTION: float = 0.012
#: Margin added around the breast box, fraction of the original size (keeps the skin line); it
#: stops before a removed film artefact.
CROP_MARGIN_FRACTION: float = 0.01
#: Pixels of the segmentation copy within this fraction of the value range below its maximum are
#: saturated (labels, lead markers, unexposed film: flat plateaus at the top of the range).
SATURATION_TOLERANCE: float = 0.02
#: The plateau is closed over this fraction of the copy's longest side before it is
#: cut into blobs (2 pixels at 512): letters and the blur of the scan split a card's thin saturated frame.
PLATEAU_CLOSE_FRACTION: float = 0.004
#: Saturated blobs smaller than this share of the copy's pixels are ignored (4 pixels at 512x307):
#: single bright pixels of tissue or noise.
ARTEFACT_MIN_SHARE: float = 2.5e-5
#: A saturated blob's holes (the dark letters of a marker or label card) are filled when they hold
#: no more pixels than the blob itself or than this share of the copy (a breast is far larger).
HOLE_FILL_SHARE: float = 0.05
#: The blurred rim of a saturated blob, as a fraction of the copy's longest side (2 pixels at 512):
#: removed with the blob; the ring judged for tissue lies just outside it, as wide again.
ARTEFACT_RIM_FRACTION: float = 0.004
#: A saturated blob stays (tissue) when at least this share of its outer ring is foreground.
SATURATED_TISSUE_SHARE: float = 0.5
#: Removed artefacts are left out of the threshold statistics from this share of the pixels on (the
#: percentile stretch ignores the top 0.5 % anyway).
STATS_ARTEFACT_SHARE: float = 0.005
#: A straight line is a run of columns (rows) at least this full of foreground ...
LINE_FILL: float = 0.75
#: ... at most this fraction of the image side thick ...
LINE_MAX_FRACTION: float = 0.02
#: ... flanked by columns (rows) less full than this.
LINE_FLANK: float = 0.3
#: Safety net: when the breast found after removing film artefacts has less than this share of the
#: pixels of the breast found without removing them, the removal is undone (a crop holding a
#: marker is better than a crop cutting the breast).
ARTEFACT_SAFETY_SHARE: float = 0.5

#: Pixels of the original image left between the breast's box and a touching marker's first
#: saturated pixel (the scanner's blur: the marker's edge rows are bright but not saturated).
EDGE_RIM_PIXELS: int = 2

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")
FLIP_TARGETS: tuple[str, ...] = ("left", "none")


@dataclass(frozen=True)
class TransformRecord:
    """Geometry applied to one image: original size, crop box, flip, scale, padding, final size.

    The geometric fields are the manifest's ``TRANSFORM_COLUMNS``. ``flipped`` mirrors the crop
    horizontally. ``orientation_source`` says what decided the chest-wall side (see
    :func:`chest_wall_from_header`): ``patient_orientation`` or ``laterality`` (the DICOM header) or
    ``pixels`` (the segmentation's estimate); ``orientation_disagrees`` is set when a header decided
    and the pixel estimate pointed the other way (worth a look: a mislabelled header or a breast that
    fills the frame). Both have defaults, so records written before they existed still load, as
    does ``reduce`` (0: a full decode).
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
    orientation_source: str = "pixels"
    orientation_disagrees: bool = False
    #: JPEG 2000 resolution levels dropped while decoding (``mammoclip.data.preprocess``'s ``j2k_reduce``):
    #: the pixels came from a ``2**reduce`` times smaller decode, while every field above stays in
    #: original DICOM pixels (the crop is then a multiple of ``2**reduce``). Provenance only: the
    #: mapping needs nothing else.
    reduce: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TransformRecord:
        """Rebuild a record from a manifest row (or any mapping with the column names).

        Fields with a default (the orientation provenance) may be missing or empty: rows and
        sidecars written before they existed load with the defaults.
        """
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.default is not MISSING:
                value = row.get(f.name) if hasattr(row, "get") else None
                if value is None or (isinstance(value, str) and not value) or _is_nan(value):
                    continue
            else:
                value = row[f.name]
            if f.name in ("flipped", "orientation_disagrees"):
                kw[f.name] = bool(int(value)) if not isinstance(value, str) else value.lower() in ("1", "true")
            elif f.name == "orientation_source":
                kw[f.name] = str(value)
            elif f.name.startswith("scale"):
                kw[f.name] = float(value)
            else:
                kw[f.name] = int(value)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The record as manifest columns (``flipped`` and ``orientation_disagrees`` as 0/1)."""
        d = asdict(self)
        d["flipped"] = int(self.flipped)
        d["orientation_disagrees"] = int(self.orientation_disagrees)
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


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


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


#: Below this many values :func:`tail_percentiles` leaves the work to ``np.percentile`` (nothing to save).
_TAIL_MIN_VALUES: int = 4096
#: Values sampled (with a stride) to place the tail thresholds of :func:`tail_percentiles`.
_TAIL_SAMPLE: int = 8192


def tail_percentiles(values: np.ndarray, q: Sequence[float]) -> tuple[float, ...]:
    """``np.percentile(values, q)`` (its default ``linear`` method), bit for bit, for float data.

    ``np.percentile`` partitions a copy of every value (~1.6 ms on the 157 k pixels of the
    segmentation copy, once or twice per image). The 0.5th and 99.5th percentiles need only the
    few hundred values at either end: a strided sample places one threshold per end, exact counts
    check that each order statistic lies at or beyond it, and only the values beyond are
    partitioned (a tie at the threshold is the threshold itself). The statistics are those of the
    whole array, and the interpolation repeats numpy's arithmetic (the same float32 difference, the
    same float64 weights), so the result is numpy's to the bit. Integer or short input, NaN, or a
    threshold that falls short go to ``np.percentile`` itself.
    """
    flat = np.asarray(values).ravel()
    n = flat.size
    if n < _TAIL_MIN_VALUES or flat.dtype not in (np.float32, np.float64) or np.isnan(flat).any():
        return tuple(float(v) for v in np.percentile(flat, q))
    qs = np.true_divide(np.asarray(q, dtype=np.float64), 100)
    virtual = (n - 1) * qs  # numpy's 'linear' virtual index
    prev = np.floor(virtual)
    nxt = prev + 1
    last = virtual >= n - 1
    prev[last], nxt[last] = n - 1, n - 1
    gamma = virtual - np.floor(virtual)
    gamma[last] = virtual[last] + 1  # numpy's index -1 for the last value (a weight >= 0.5 on b == a)
    ranks = sorted({int(r) for r in np.concatenate([prev, nxt])})
    low = [r for r in ranks if r < n // 2]
    high = [r for r in ranks if r >= n // 2]
    sample = flat[::max(1, n // _TAIL_SAMPLE)]
    m = sample.size
    # Sample ranks with room to spare (x1.5 + 8), so the exact counts below almost never fall short.
    k_lo = min(m - 1, int(1.5 * (low[-1] + 1) * m / n) + 8) if low else 0
    k_hi = max(0, m - 1 - int(1.5 * (n - high[0]) * m / n) - 8) if high else m - 1
    part = np.partition(sample, (k_lo, k_hi))
    order: dict[int, float] = {}
    for group, t, below in ((low, part[k_lo], True), (high, part[k_hi], False)):
        if not group:
            continue
        beyond = flat < t if below else flat > t
        n_beyond = int(np.count_nonzero(beyond))
        n_at = int(np.count_nonzero(flat == t))
        # Positions counted from this end: within the strict tail, at the threshold, or short.
        depth = [r if below else n - 1 - r for r in group]
        if max(depth) >= n_beyond + n_at:
            return tuple(float(v) for v in np.percentile(flat, q))
        inner = [d if below else n_beyond - 1 - d for d in depth if d < n_beyond]  # ascending positions
        tail = np.partition(flat[beyond], inner) if inner else None
        for r, d in zip(group, depth):
            if d >= n_beyond:
                order[r] = t
            else:
                assert tail is not None
                order[r] = tail[d] if below else tail[n_beyond - 1 - d]
    a = np.array([order[int(r)] for r in prev], dtype=flat.dtype)
    b = np.array([order[int(r)] for r in nxt], dtype=flat.dtype)
    # numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) from t = 0.5 on (monotone, exact ends).
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype)
    return tuple(float(v) for v in out)


def _to_uint8(small: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Stretch the 0.5-99.5 percentiles to 0-255; the percentiles skip ``exclude`` (film artefacts).

    Saturated labels and film edges can hold more than 0.5 % of the pixels: left in, they set the
    upper percentile and squeeze the breast into a few grey levels, where Otsu then splits the
    breast itself (before this, 5 % of the breast pixels of film-style images fell outside the crop).
    """
    lo, scale = _stretch(small, exclude)
    return _stretched(small, lo, scale)


def _kept(small: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """The pixels the statistics read when ``exclude`` has any: every other row and column outside it."""
    return small[::2, ::2][exclude[::2, ::2] == 0]


def _stretch(small: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.float64, np.float64]:
    """``(lo, 255 / (hi - lo))`` of :func:`_to_uint8`: its 0.5-99.5 percentile window, without ``exclude``."""
    # Without artefacts: every pixel, as always. With them, every other row and column suffice (this
    # path runs once more per film image).
    values = small if exclude is None or not exclude.any() else _kept(small, exclude)
    if values.size == 0:
        values = small
    lo, hi = (np.float64(v) for v in tail_percentiles(values, (0.5, 99.5)))
    if hi <= lo:
        hi = lo + 1.0
    return lo, np.float64(255.0 / (hi - lo))


def _stretched(values: np.ndarray, lo: np.float64, scale: np.float64) -> np.ndarray:
    """uint8 ``floor(clip((values - lo) * scale, 0, 255))``, in float64 (``lo`` is)."""
    out = values - lo  # the same values as the one-line form, fewer temporaries
    out *= scale
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _first_at_least(lo: np.float64, scale: np.float64, k: int) -> np.float32 | None:
    """The smallest float32 ``x`` whose :func:`_stretched` value is at least ``k`` (1..255), or None.

    The stretch is monotone in ``x`` (each float operation is), so ``u8 >= k`` is ``x >= this``:
    one comparison of the float copy replaces stretching every pixel. Found by stepping from the
    algebraic answer one float32 at a time (a step or two); None if that does not settle.
    """
    def reaches(x: np.float32) -> bool:
        return bool((np.float64(x) - lo) * scale >= k)

    with np.errstate(all="ignore"):
        x = np.float32(lo + k / scale)
    if not np.isfinite(x):
        return None
    down, up = np.float32(-np.inf), np.float32(np.inf)
    for _ in range(64):
        if reaches(x):
            below = np.nextafter(x, down)
            if not reaches(below):
                return x
            x = below
        else:
            x = np.nextafter(x, up)
    return None


def _foreground(small: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """uint8 0/1 foreground: above half the Otsu threshold, both computed without ``exclude``.

    Otsu splits background from dense tissue; the fatty skin edge sits between, so it is halved.
    On a uint8 image ``u8 > t`` is ``u8 > floor(t)``, which is what ``cv2.threshold`` computes.
    The ``exclude`` pixels themselves are thresholded like the rest (the caller decides about them).
    """
    import cv2

    lo, scale = _stretch(small, exclude)
    if (small.dtype == np.float32 and exclude is not None and exclude.any() and np.isfinite(lo)
            and np.isfinite(scale) and scale > 0):
        # Otsu reads the kept quarter only, and the threshold needs no uint8 image: ``u8 > t`` is
        # ``small >= x`` for the first float32 ``x`` that stretches to ``floor(t) + 1`` (monotone).
        thr, _ = cv2.threshold(_stretched(_kept(small, exclude), lo, scale).reshape(-1, 1), 0, 255,
                               cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        k = int(np.floor(max(1.0, 0.5 * thr))) + 1
        if k > 255:
            return np.zeros(small.shape, np.uint8)
        x = _first_at_least(lo, scale, k)
        if x is not None:
            return (small >= x).view(np.uint8)
    u8 = _stretched(small, lo, scale)
    sample = u8 if exclude is None or not exclude.any() else _kept(u8, exclude).reshape(-1, 1)
    thr, _ = cv2.threshold(sample, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, fg = cv2.threshold(u8, max(1.0, 0.5 * thr), 1, cv2.THRESH_BINARY)
    return fg


def _components(binary: np.ndarray) -> tuple[int, np.ndarray]:
    """``cv2.connectedComponents(binary, connectivity=8)``: the same labels, in 16 bits when they must
    fit (an 8-connected component needs a 2x2 cell of its own), else 32.

    The segmentation copy (at most 512 x 512) always fits: half the bytes to write and read back, and
    OpenCV labels into 16 bits faster.
    """
    import cv2

    cells = ((binary.shape[0] + 1) // 2) * ((binary.shape[1] + 1) // 2)
    n, labels = cv2.connectedComponents(binary, connectivity=8, ltype=cv2.CV_16U if cells < 65535 else cv2.CV_32S)
    return int(n), labels


def _label_counts(labels: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels per label ``0..n-1`` (under ``mask`` when given), as int64.

    With at most 256 labels (the usual handful of pieces) ``cv2.calcHist`` counts the labels cast to
    bytes in one pass, ~3x faster than ``np.bincount`` (which first copies them to 64 bits); the
    float32 counts are exact below 2**24 pixels.
    """
    import cv2

    if n <= 256 and labels.size < 2**24:
        hist = cv2.calcHist([labels.astype(np.uint8)], [0], mask, [256], [0, 256])
        return hist.ravel()[:n].astype(np.int64)
    values = labels.ravel() if mask is None else labels[mask > 0]
    return np.bincount(values, minlength=n)


def _largest_component(binary: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Label image and label of the largest 8-connected component of a 0/1 uint8 image (None: empty).

    Areas are counted from the labels (:func:`_label_counts`): ``connectedComponentsWithStats``
    computes the same areas (and boxes and centroids nobody reads) at several times the cost of
    the labelling itself. Same labels, and ``argmax`` breaks ties towards the lower label as before.
    """
    n, labels = _components(binary)  # labels: (h, w) uint16 (int32 on a frame too large for 16 bits)
    if n <= 1:
        return None
    areas = _label_counts(labels, n)
    return labels, 1 + int(np.argmax(areas[1:]))


def _min_area(shape: tuple[int, ...]) -> int:
    return max(1, round(ARTEFACT_MIN_SHARE * shape[0] * shape[1]))


def saturated_plateau(small: np.ndarray) -> np.ndarray | None:
    """uint8 0/1 mask of the pixels within :data:`SATURATION_TOLERANCE` of the maximum, or None
    when they are too few to hold a blob of :data:`ARTEFACT_MIN_SHARE` (the cheap early exit that
    keeps images without film artefacts on the old path: a min/max and one comparison)."""
    import cv2

    lo, hi, _, _ = cv2.minMaxLoc(small)
    if hi <= lo:
        return None
    sat = (small >= hi - SATURATION_TOLERANCE * (hi - lo)).view(np.uint8)
    return sat if cv2.countNonZero(sat) >= _min_area(small.shape) else None


def saturated_artefacts(small: np.ndarray, fg: np.ndarray, plateau: np.ndarray | None = None) -> np.ndarray:
    """Saturated blobs that stand in the background (labels, lead markers, bright film edges).

    Burned-in labels, lead markers and unexposed film edges sit at the top of the value range, in
    flat plateaus; breast tissue reaches it only in single pixels, a calcification or a bright strip
    along the chest wall, and those are surrounded by tissue. So every plateau component
    (:func:`saturated_plateau`) whose outline runs mostly through background (less than
    :data:`SATURATED_TISSUE_SHARE` of its outer ring is tissue) is an artefact, even when it touches
    the breast along one side. Holes (the dark letters of a marker or label card) are filled first
    when they are no larger than the blob or :data:`HOLE_FILL_SHARE` of the image: they belong to
    it, and their pixels must not count as its ring. Every size is relative to the copy's size.

    Args:
        small: The segmentation copy (float).
        fg: uint8 0/1 tissue to judge the rings by: the foreground, thresholded without the
            plateau when that is a notable share of the pixels (see :func:`segment_breast`).
        plateau: :func:`saturated_plateau` of ``small`` when the caller has it.

    Returns:
        uint8 0/1 mask of the artefacts, grown by their blurred rim (:data:`ARTEFACT_RIM_FRACTION`).
    """
    import cv2

    out = np.zeros(small.shape, np.uint8)
    sat = saturated_plateau(small) if plateau is None else plateau
    if sat is None:
        return out
    longest = max(small.shape)
    c = round(PLATEAU_CLOSE_FRACTION * longest)
    r = max(1, round(ARTEFACT_RIM_FRACTION * longest))
    # Work in the plateau's box, grown by the reach of the closing, the ring and the rim: the same
    # result as on the whole copy, at a fraction of the cost (a marker covers < 1 % of the image).
    bx, by, bw, bh = cv2.boundingRect(sat)
    pad = c + 5 * r + 1
    win = (slice(max(0, by - pad), by + bh + pad), slice(max(0, bx - pad), bx + bw + pad))
    sat, fg = sat[win], fg[win]
    # Early exit: a blob whose ring is mostly background has background within the ring's reach.
    ring_kernel = np.ones((4 * r + 1, 4 * r + 1), np.uint8)
    if not cv2.countNonZero(cv2.bitwise_and(sat, cv2.dilate(1 - fg, ring_kernel))):
        return out
    if c > 0:  # one blob per card or marker, however its letters cut its saturated part
        sat = cv2.morphologyEx(sat, cv2.MORPH_CLOSE, np.ones((2 * c + 1, 2 * c + 1), np.uint8))
    # 16-bit labels whenever they must fit (8-connected components need a 2x2 cell each): OpenCV
    # computes the statistics ~3x faster into them, with the same labels.
    cells = ((sat.shape[0] + 1) // 2) * ((sat.shape[1] + 1) // 2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        sat, connectivity=8, ltype=cv2.CV_16U if cells < 65535 else cv2.CV_32S)
    areas = stats[:, cv2.CC_STAT_AREA]
    big = np.flatnonzero(areas[1:] >= _min_area(small.shape)) + 1
    if not 0 < big.size < 65536:
        return out
    # Blobs 1..m in label order, the rest background; 8 bits when they fit (the usual handful of
    # labels and markers: table lookups and dilations of bytes), else 16 (dilate's limit).
    relabel = np.zeros(n, np.uint8 if big.size < 256 else np.uint16)
    relabel[big] = np.arange(1, big.size + 1)
    blobs = _lookup(relabel, labels)
    hole_limit = HOLE_FILL_SHARE * small.size
    for k, j in enumerate(big, start=1):
        x, y, w, h = (int(v) for v in stats[j, :4])
        if w < 3 or h < 3:  # nothing to enclose
            continue
        sub = blobs[y:y + h, x:x + w]
        own = (sub == k).view(np.uint8)
        contours, _ = cv2.findContours(own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        filled = cv2.drawContours(np.zeros_like(own), contours, -1, 1, cv2.FILLED)
        holes = (filled > 0) & (sub == 0)
        if int(holes.sum()) <= max(int(areas[j]), hole_limit):
            sub[holes] = k
    rim_kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    rim = cv2.dilate(blobs, rim_kernel)  # the blurred edge: bright, but not saturated
    near = cv2.dilate(blobs, ring_kernel)  # ring pixels carry a neighbouring blob's label
    ring = (near > 0) & (rim == 0)
    owner = near[ring]
    m = big.size + 1
    tissue = np.bincount(owner, weights=fg[ring], minlength=m)
    outline = np.bincount(owner, minlength=m)
    drop = (outline > 0) & (tissue < SATURATED_TISSUE_SHARE * outline)
    drop[0] = False
    if drop.any():
        out[win] = cv2.dilate(_lookup(drop.view(np.uint8), blobs), rim_kernel)
    return out


def _lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a small table: ``cv2.LUT`` (a byte lookup, ~10x numpy's gather) when the
    table holds bytes and every index fits in one, numpy's gather otherwise."""
    import cv2

    if table.dtype == np.uint8 and table.size <= 256:
        index8 = index if index.dtype == np.uint8 else index.astype(np.uint8)
        return cv2.LUT(index8, np.pad(table, (0, 256 - table.size)))
    return table[index]


def straight_lines(fg: np.ndarray) -> np.ndarray:
    """Thin straight bands running the length of the image (scanner strips, thin film edges).

    A digitizer leaves lines of constant offset across the whole film, and film edges are strips
    along a border: in the column (row) profile of the foreground they are a few columns (rows)
    almost entirely foreground, flanked by columns (rows) that are mostly background. The breast
    is never that: its columns fill gradually from the nipple to the chest wall, and at the chest
    wall the image border, not background, flanks it (a run at the border counts only with
    background on its inner side). Anything wider than :data:`LINE_MAX_FRACTION` of the side is
    left to the other steps.

    Returns:
        uint8 0/1 mask of the line pixels (whole columns and rows).
    """
    import cv2

    out = np.zeros_like(fg)
    for axis in (0, 1):  # axis 0: column profile (vertical lines)
        sums = cv2.reduce(fg, axis, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        profile = sums / fg.shape[axis]
        full = profile >= LINE_FILL
        if not full.any():
            continue
        size = profile.size
        widest = max(1, round(LINE_MAX_FRACTION * size))
        edges = np.flatnonzero(np.diff(np.concatenate(([0], full.view(np.int8), [0]))))
        for start, stop in zip(edges[::2], edges[1::2]):
            if stop - start > widest:
                continue
            before = profile[start - 1] if start > 0 else None
            after = profile[stop] if stop < size else None
            flanks = [v for v in (before, after) if v is not None]
            if flanks and all(v < LINE_FLANK for v in flanks):
                if axis == 0:
                    out[:, start:stop] = 1
                else:
                    out[start:stop, :] = 1
    return out


def _bright_pieces(small: np.ndarray, rest: np.ndarray, breast: np.ndarray,
                   within: np.ndarray | None = None) -> np.ndarray:
    """uint8 0/1: the 8-connected pieces of ``rest`` that hold a pixel brighter than all of ``breast``.

    Labels and markers are burned in at the top of the value range, above the breast's densest
    tissue; the breast's own fringe (the skin line, the nipple, what an opening rounds off) is
    dimmer than that. Only the bright pixels inside ``within`` (default: anywhere) name pieces.
    A piece is taken whole: the thin strokes of a letter are not bright on the copy, its thick ones are.
    """
    import cv2

    _, top, _, _ = cv2.minMaxLoc(small, mask=breast)
    bright = cv2.bitwise_and((small > top).view(np.uint8), rest if within is None else cv2.bitwise_and(rest, within))
    if not cv2.countNonZero(bright):
        return np.zeros_like(rest)
    m, pieces = _components(rest)
    hit = (_label_counts(pieces, m, bright) > 0).view(np.uint8)
    hit[0] = 0
    return _lookup(hit, pieces)


def _regrow(core: np.ndarray, fg: np.ndarray, kernel: np.ndarray, small: np.ndarray | None = None) -> np.ndarray:
    """Grow the opened breast back by the opening radius inside ``fg``, keeping only connected pixels.

    The opening rounds the skin line, the nipple and the corners where the breast meets the chest
    wall; growing back restores them. A plain ``dilate & fg`` also takes in anything within the
    radius across background (a label 1-2 % of the width from the breast); keeping only what
    connects to the breast leaves those out.
    """
    import cv2

    reach = cv2.dilate(core, kernel)
    grown = cv2.bitwise_and(reach, fg)
    if small is not None:
        foreign = _bright_pieces(small, cv2.bitwise_and(fg, 1 - core), core, within=grown)
        grown[foreign > 0] = 0
    n, labels = _components(grown)
    if n <= 2:
        return grown
    # ``core`` is one connected component inside ``grown``: any of its pixels names the one to keep.
    label = labels.flat[int(np.argmax(core))]
    return (labels == label).view(np.uint8)


def _breast_mask(fg: np.ndarray, kernel: np.ndarray, connected: bool, small: np.ndarray | None = None
                 ) -> np.ndarray | None:
    """Open, take the largest component, grow it back inside ``fg`` (None: no foreground at all).

    ``connected`` keeps only regrown pixels connected to the breast (:func:`_regrow`); without it
    the regrowth is the plain ``dilate & fg`` of the segmentation before film artefacts were handled.
    """
    import cv2

    core = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    largest = _largest_component(core)
    if largest is None:
        largest = _largest_component(fg)
    if largest is None:
        return None
    labels, label = largest
    comp = (labels == label).view(np.uint8)  # (sh, sw) uint8 0/1 (bool bytes, no copy)
    if connected:
        return _regrow(comp, fg, kernel, small)
    return cv2.bitwise_and(cv2.dilate(comp, kernel), fg)


def _clamped_box(mask: np.ndarray, stop: np.ndarray | None, f: float, shape: tuple[int, int],
                 margin: float) -> tuple[int, int, int, int]:
    """The mask's box in original pixels, plus the margin, but never reaching into ``stop``.

    The margin keeps the skin line; it must not take in an artefact 0.4-1 % of the width away
    from the breast. On each side the margin ends before the first ``stop`` pixel (within the
    margin band, next to the box) and never cuts into the mask's own box.
    """
    import cv2

    h, w = shape
    bx, by, bw, bh = cv2.boundingRect(mask)
    mx, my = margin * w, margin * h
    inner = (int(np.floor(bx / f)), int(np.floor(by / f)), int(np.ceil((bx + bw) / f)), int(np.ceil((by + bh) / f)))
    x0, y0 = max(0, int(np.floor(bx / f - mx))), max(0, int(np.floor(by / f - my)))
    x1, y1 = min(w, int(np.ceil((bx + bw) / f + mx))), min(h, int(np.ceil((by + bh) / f + my)))
    if stop is None or not stop.any():
        return x0, y0, x1, y1
    sh, sw = stop.shape
    # Bands in small pixels beside each side of the box, as wide as the margin (+1 for rounding).
    ax0, ay0 = max(0, int(np.floor(x0 * f))), max(0, int(np.floor(y0 * f)))
    ax1, ay1 = min(sw, int(np.ceil(x1 * f))), min(sh, int(np.ceil(y1 * f)))
    cols: np.ndarray = np.asarray(stop[ay0:ay1].any(axis=0))
    rows: np.ndarray = np.asarray(stop[:, ax0:ax1].any(axis=1))
    right = np.flatnonzero(cols[bx + bw:ax1])
    if right.size:
        x1 = max(inner[2], min(x1, int(np.floor((bx + bw + right[0]) / f))))
    left = np.flatnonzero(cols[ax0:bx][::-1])
    if left.size:
        x0 = min(inner[0], max(x0, int(np.ceil((bx - left[0]) / f))))
    below = np.flatnonzero(rows[by + bh:ay1])
    if below.size:
        y1 = max(inner[3], min(y1, int(np.floor((by + bh + below[0]) / f))))
    above = np.flatnonzero(rows[ay0:by][::-1])
    if above.size:
        y0 = min(inner[1], max(y0, int(np.ceil((by - above[0]) / f))))
    return x0, y0, x1, y1


def _refine_edges(image: np.ndarray, lut: np.ndarray | None, mask: np.ndarray, stop: np.ndarray, f: float,
                  box: tuple[int, int, int, int], level: float) -> tuple[int, int, int, int]:
    """Move each side of the box back, in original pixels, to just before a touching marker.

    On the copy a marker touching the breast is one or two pixels from it, and one copy pixel is
    ``1 / f`` original pixels (3 at 1520 px): the box rounded outward holds the marker's first rows.
    Where a ``stop`` pixel (artefact, or foreground that is not the breast) lies within a copy
    pixel of a side of the breast's box, the side is moved at full resolution to
    :data:`EDGE_RIM_PIXELS` before the first saturated pixel (``>= level``) in that stretch, looking
    no deeper than two copy pixels inside the breast's box (the breast loses at most those rows
    there). The rim is in original pixels: it is the scanner's blur, which does not scale with
    the copy.
    """
    import cv2

    h, w = image.shape
    sh, sw = mask.shape
    bx, by, bw, bh = cv2.boundingRect(mask)
    x0, y0, x1, y1 = box
    for side in ("top", "bottom", "left", "right"):
        vertical = side in ("top", "bottom")  # the side is a row: look along columns
        plane = stop if vertical else stop.T
        lo_s, hi_s = (bx, bx + bw) if vertical else (by, by + bh)
        edge = {"top": by, "bottom": by + bh, "left": bx, "right": bx + bw}[side]
        outward = side in ("bottom", "right")
        beyond = plane[edge:edge + 2] if outward else plane[max(0, edge - 2):edge]
        if not beyond[:, lo_s:hi_s].any():  # nothing outside this side (e.g. the image border)
            continue
        band = plane[max(0, edge - 1):edge + 2] if outward else plane[max(0, edge - 2):edge + 1]
        across = np.flatnonzero(band[:, lo_s:hi_s].any(axis=0)) + lo_s
        other = w if vertical else h
        a0 = max(0, int(np.floor((across[0] - 1) / f)))
        a1 = min(other, int(np.ceil((across[-1] + 2) / f)))
        cur0, cur1 = (y0, y1) if vertical else (x0, x1)
        # Look past the current side by the rim and a pixel: the marker's first rows are blurred.
        reach = EDGE_RIM_PIXELS + 1
        if outward:
            d0, d1 = max(cur0, int(np.floor((edge - 2) / f))), min(h if vertical else w, cur1 + reach)
        else:
            d0, d1 = max(0, cur0 - reach), min(cur1, int(np.ceil((edge + 2) / f)))
        if d1 <= d0:
            continue
        window = image[d0:d1, a0:a1] if vertical else image[a0:a1, d0:d1].T
        hot = np.flatnonzero((map_codes(window, lut) >= level).any(axis=1))
        if hot.size == 0:
            continue
        if outward:
            cur1 = min(cur1, max(d0, d0 + int(hot[0]) - EDGE_RIM_PIXELS))
        else:
            cur0 = max(cur0, min(d1, d0 + int(hot[-1]) + 1 + EDGE_RIM_PIXELS))
        if vertical:
            y0, y1 = cur0, cur1
        else:
            x0, x1 = cur0, cur1
    return x0, y0, x1, y1


def segment_breast(image: np.ndarray, *, max_side: int = SEGMENT_MAX_SIDE,
                   margin: float = CROP_MARGIN_FRACTION, lut: np.ndarray | None = None) -> Segmentation:
    """Find the breast on a small copy: threshold, drop film artefacts, open, largest component, regrow.

    The steps, each a function: :func:`_foreground` (Otsu, halved); :func:`saturated_artefacts`
    (saturated blobs in the background: labels, markers, bright film edges) are removed, with the
    threshold recomputed without the saturated plateau when that is a notable share of the pixels;
    :func:`straight_lines` (scanner strips, thin film edges) are removed; an opening cuts thin
    structures (label strokes) off the breast; the largest component is grown back connected
    (:func:`_regrow`), never into a piece brighter than all of the breast (:func:`_bright_pieces`:
    a label or marker touching it); the box gets a margin that stops before any removed artefact or
    such piece (:func:`_clamped_box`), and a side next to one is moved in original pixels to just
    before it (:func:`_refine_edges`). Safety net: when the breast so found has less than
    :data:`ARTEFACT_SAFETY_SHARE` of the pixels of the breast found without removing anything, the
    removal is undone. An image without film artefacts (a detector image) takes the path it took
    before these steps existed, plain regrowth included: the same box, at a few checks' cost.

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
    # Every mask below is uint8 0/1 (cv2 works on it in place of numpy bool temporaries).
    fg0 = _foreground(small)
    fg, artefacts = fg0, None
    sat = saturated_plateau(small)
    if sat is not None:
        notable = STATS_ARTEFACT_SHARE * sat.size
        # Large saturated areas squeeze the rest of the range: judge the rings by a threshold without them.
        fg_sat = _foreground(small, sat) if cv2.countNonZero(sat) >= notable else fg0
        found = saturated_artefacts(small, fg_sat, sat)
        if found.any():
            # The statistics change only when the artefacts are a notable share of the pixels, so
            # crops of images with a small marker do not move. Saturated tissue stays foreground.
            fg = cv2.bitwise_or(fg_sat, sat) if cv2.countNonZero(found) >= notable else fg0.copy()
            fg[found > 0] = 0
            artefacts = found
    lines = straight_lines(fg)
    if lines.any():
        fg = fg.copy() if fg is fg0 else fg
        fg[lines > 0] = 0
        artefacts = lines if artefacts is None else artefacts | lines
    r = max(1, round(SEGMENT_OPEN_FRACTION * max(sh, sw)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    mask = _breast_mask(fg, kernel, connected=artefacts is not None, small=small)
    if artefacts is not None:
        area = 0 if mask is None else cv2.countNonZero(mask)
        if area < ARTEFACT_SAFETY_SHARE * cv2.countNonZero(fg0):  # cheap bound first
            before = _breast_mask(fg0, kernel, connected=False)
            if before is not None and area < ARTEFACT_SAFETY_SHARE * cv2.countNonZero(before):
                mask, artefacts = before, None
    if mask is None:
        return Segmentation(0, 0, w, h, "left", np.ones((sh, sw), dtype=bool))
    stop = artefacts
    if artefacts is not None:
        stop = cv2.bitwise_or(artefacts, _bright_pieces(small, cv2.bitwise_and(fg, 1 - mask), mask))
    x0, y0, x1, y1 = _clamped_box(mask, stop, f, (h, w), margin)
    if stop is not None:
        level = float(small.max()) - SATURATION_TOLERANCE * float(small.max() - small.min())
        x0, y0, x1, y1 = _refine_edges(image, lut, mask, stop, f, (x0, y0, x1, y1), level)
    half = sw // 2
    left_area = cv2.countNonZero(mask[:, :half]) if half else 0
    right_area = cv2.countNonZero(mask[:, sw - half:]) if half else 0
    side = "left" if left_area >= right_area else "right"
    mask = mask.view(bool)  # 0/1 bytes are valid bools: no copy
    return Segmentation(x0, y0, x1, y1, side, mask)


#: What can decide the chest-wall side, most trusted first (see :func:`chest_wall_from_header`).
ORIENTATION_SOURCES: tuple[str, ...] = ("patient_orientation", "laterality", "pixels")
#: ImageLaterality -> chest-wall side of an image stored as it is hung (right breast on the viewer's
#: left, chest walls back to back in the middle): the layout of MG "for presentation" images.
_LATERALITY_CHEST_WALL: dict[str, str] = {"L": "left", "R": "right"}


def _orientation_values(patient_orientation: Any) -> list[str]:
    """PatientOrientation as a list of upper-case values (pydicom MultiValue, list, or ``"A\\R"``)."""
    if patient_orientation is None:
        return []
    if isinstance(patient_orientation, str):
        return [v.strip().upper() for v in patient_orientation.split("\\")]
    return [str(v).strip().upper() for v in patient_orientation]


def chest_wall_from_header(patient_orientation: Any = None, laterality: str | None = None
                           ) -> tuple[str | None, str]:
    """The chest-wall side (``left``/``right``) the DICOM header states, and which field said so.

    PatientOrientation (0020,0020) holds two values: the patient direction of the rows (the way the
    column index grows, left to right on screen) and of the columns (top to bottom). In a
    mammogram the rows run from the chest wall to the nipple or back, so the first value says it:

    * ``A`` (anterior) in the first value: going right moves toward the nipple, so the chest wall is
      on the **left**. Left CC ``["A", "R"]``, left MLO ``["A", "FR"]``; also a right breast
      stored mirrored, ``["A", "L"]``.
    * ``P`` (posterior): going right moves toward the chest wall, which is on the **right**. Right
      CC ``["P", "L"]``, right MLO ``["P", "FL"]``.

    The second value (``R``/``L``/``F``/``H``...) only says which way is up and is not needed. A
    value without exactly one of ``A``/``P`` in the first entry (absent, empty, or a view name such
    as the CBIS-DDSM files' ``"CC"``) says nothing. Then ImageLaterality decides with the hanging
    layout (``L``: chest wall left, ``R``: right), which holds for images stored as they are read;
    without either, the caller falls back on the pixels.

    Returns:
        ``(side, source)`` with ``source`` one of :data:`ORIENTATION_SOURCES`; ``(None, "pixels")``
        when the header says nothing.
    """
    values = _orientation_values(patient_orientation)
    if len(values) == 2:
        row = values[0]
        if ("A" in row) != ("P" in row):
            return ("left" if "A" in row else "right"), "patient_orientation"
    side = _LATERALITY_CHEST_WALL.get(str(laterality or "").strip().upper())
    if side is not None:
        return side, "laterality"
    return None, "pixels"


def plan_transform(
    orig_shape: tuple[int, int],
    crop: tuple[int, int, int, int],
    size: tuple[int, int],
    *,
    resize: str = "stretch",
    flip: bool = False,
    anchor: str = "left",
    orientation_source: str = "pixels",
    orientation_disagrees: bool = False,
) -> TransformRecord:
    """Compute the record for a crop, an optional flip and a resize to ``size`` = (H, W).

    Args:
        orig_shape: Original ``(H, W)``.
        crop: ``(x0, y0, x1, y1)``, exclusive ends.
        resize: ``stretch`` (aspect not kept, as in the paper) or ``pad`` (aspect kept, zero padding).
        flip: Mirror the crop horizontally.
        anchor: With ``pad``, the side the image is placed against (the chest wall after the flip).
        orientation_source, orientation_disagrees: Provenance of the chest-wall side, stored in the
            record (see :class:`TransformRecord`).
    """
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if orientation_source not in ORIENTATION_SOURCES:
        raise ConfigError(f"orientation_source must be one of {ORIENTATION_SOURCES}, got {orientation_source!r}")
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
        orientation_source=orientation_source, orientation_disagrees=bool(orientation_disagrees),
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

    def plan(self, image: np.ndarray, *, lut: np.ndarray | None = None, patient_orientation: Any = None,
             laterality: str | None = None) -> tuple[TransformRecord, Segmentation]:
        """Segment the image and compute its record without touching the pixels.

        The chest-wall side comes from the header when it states one (:func:`chest_wall_from_header`:
        PatientOrientation, then ImageLaterality); the pixel estimate is the fallback, and otherwise
        a cross-check whose disagreement the record keeps.
        """
        seg = segment_breast(image, lut=lut)
        side, source = chest_wall_from_header(patient_orientation, laterality)
        chest_wall = side or seg.chest_wall
        flip = self.flip_to == "left" and chest_wall == "right"
        anchor = "left" if (chest_wall == "left") != flip else "right"
        record = plan_transform(image.shape, (seg.x0, seg.y0, seg.x1, seg.y1), self.size,
                                resize=self.resize, flip=flip, anchor=anchor, orientation_source=source,
                                orientation_disagrees=chest_wall != seg.chest_wall)
        return record, seg

    def __call__(self, image: np.ndarray, window_range: tuple[float, float] | None = None, *,
                 lut: np.ndarray | None = None, patient_orientation: Any = None,
                 laterality: str | None = None) -> tuple[np.ndarray, TransformRecord]:
        """Plan (see :meth:`plan`) and render; the header fields are optional."""
        record, _ = self.plan(image, lut=lut, patient_orientation=patient_orientation, laterality=laterality)
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
