"""One image in, the model's input tensor out: the batch pipeline for a single DICOM, PNG, array or PIL image.

``model, preprocess = create_model_and_transforms(name_or_path)`` (open_clip's shape) or
``from_pretrained(path)`` (Hugging Face's name) returns the model and a :class:`ModelPreprocess`:

* a **DICOM path** goes through exactly what ``mammoclip preprocess`` does
  (:func:`mammoclip.data.preprocess.process_image`: ``imaging.dicom`` decode, VOI window,
  ``imaging.breast`` crop / flip / resize, cast to 8 bits), then what the evaluation datasets do
  (:func:`mammoclip.data.datasets.resize_to`, :func:`mammoclip.data.transforms.normalize_images`);
* a **PNG (or JPEG/TIFF) path** written by ``mammoclip preprocess`` (it has the ``.png.json`` sidecar)
  is already processed: it is read, resized to the model's size if needed and normalised, as the
  datasets do; its transform record comes from the sidecar;
* a **numpy array**, a **PIL image** or a PNG without sidecar is taken as a raw mammogram (bright
  breast on a dark background) and cropped / flipped / resized by the same
  :class:`~mammoclip.imaging.breast.BreastPreprocess` (min-max window inside the breast, since there
  is no VOI); ``processed=True`` skips that for pixels that are already the model's input.

The result is a ``(1, 1, H, W)`` float32 tensor on the CPU; ``return_record=True`` also gives the
:class:`~mammoclip.imaging.breast.TransformRecord` (crop box, flip, scale), which maps boxes and
heat-maps between the original and the model's input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammoclip.data.datasets import resize_to, to_tensor
from mammoclip.data.preprocess import PreprocessOptions, process_image
from mammoclip.data.transforms import normalize_images
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.breast import BreastPreprocess, TransformRecord
from mammoclip.imaging.imageio import read_image
from mammoclip.models.checkpoint import load_checkpoint
from mammoclip.models.clip import MammoCLIP
from mammoclip.models.config import PreprocessCfg
from mammoclip.models.factory import create_model

__all__ = ["ModelPreprocess", "create_model_and_transforms", "from_pretrained"]

#: File suffixes read as images; any other path is read as DICOM.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: RGB -> gray weights (ITU-R BT.601, what OpenCV and PIL use).
_LUMA = np.array([0.299, 0.587, 0.114])


def _gray(pixels: np.ndarray) -> np.ndarray:
    """A 2-D array from a 2-D one or an ``(H, W, 3|4)`` colour one, dtype kept where it can be."""
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        gray = pixels[..., :3].astype(np.float64) @ _LUMA  # (H, W)
        pixels = np.rint(gray).astype(pixels.dtype) if pixels.dtype in (np.uint8, np.uint16) else gray
    if pixels.ndim != 2:
        raise DataError(f"expected a 2-D grayscale (or H x W x 3 colour) image, got shape {pixels.shape}")
    if pixels.dtype.kind in "iu" and pixels.dtype not in (np.uint8, np.uint16):
        lo, hi = int(pixels.min()), int(pixels.max())
        pixels = pixels.astype(np.uint16) if lo >= 0 and hi <= 65535 else pixels.astype(np.float32)
    elif pixels.dtype.kind == "b":
        pixels = pixels.astype(np.uint8)
    elif pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    return pixels


def _sidecar_record(path: Path) -> TransformRecord | None:
    """The record ``mammoclip preprocess`` wrote beside a PNG (``NAME.png.json``), or None."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        state = json.loads(sidecar.read_text(encoding="utf-8"))
        return TransformRecord.from_row(state["record"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{sidecar}: not a preprocessing sidecar ({err.__class__.__name__}: {err})") from err


class ModelPreprocess:
    """``preprocess(x) -> (1, 1, H, W)`` float tensor for one image, as the batch pipeline makes it.

    Args:
        cfg: The model's :class:`~mammoclip.models.config.PreprocessCfg` (input size, mean/std, scaling).
        options: Crop / flip / window settings (default: those of ``mammoclip preprocess``, at the
            model's input size).

    Attributes:
        cfg, options: As given (``options.size`` is always the model's input size).
    """

    def __init__(self, cfg: PreprocessCfg, options: PreprocessOptions | None = None) -> None:
        self.cfg = cfg
        base = options or PreprocessOptions()
        #: The model's input size (H, W).
        self.size: tuple[int, int] = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        self.options = PreprocessOptions(size=self.size, resize=base.resize, bits=base.bits,
                                         flip_to=base.flip_to, window=base.window, mode=base.mode)

    def __repr__(self) -> str:
        o = self.options
        return (f"ModelPreprocess(size={o.size[0]}x{o.size[1]}, resize={o.resize!r}, flip_to={o.flip_to!r}, "
                f"window={o.window!r}, mode={o.mode!r}, mean={self.cfg.mean:.4g}, std={self.cfg.std:.4g}, "
                f"scaling={self.cfg.scaling!r})")

    def pixels(self, image: Any, *, processed: bool | None = None) -> tuple[np.ndarray, TransformRecord | None]:
        """The stored pixels (uint8/uint16 ``(H, W)`` at the model's size) and the transform record.

        Args:
            image: A DICOM path, an image path, a numpy array or a PIL image.
            processed: True: the pixels are already the model's input (only resized); False: crop
                them; None: a PNG with a ``mammoclip preprocess`` sidecar is processed, anything
                else that is not a DICOM is raw.
        """
        size = self.size
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.exists():
                raise DataError(f"image not found: {path}")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                if processed:
                    raise ConfigError(f"{path}: a DICOM is never already processed; drop processed=True")
                return process_image(path, self.options)
            record = _sidecar_record(path)
            if processed or (processed is None and record is not None):
                return resize_to(read_image(path), size), record
            return self._crop(read_image(path), str(path))
        if hasattr(image, "mode") and hasattr(image, "size") and not isinstance(image, np.ndarray):
            image = np.asarray(image)  # a PIL image
        if not isinstance(image, np.ndarray):
            raise DataError(f"cannot preprocess a {type(image).__name__}: give a DICOM or image path, "
                            "a numpy array or a PIL image")
        pixels = _gray(image)
        if processed:
            return resize_to(pixels, size), None
        return self._crop(pixels, "the array")

    def _crop(self, pixels: np.ndarray, what: str) -> tuple[np.ndarray, TransformRecord]:
        o = self.options
        if o.mode == "paper":
            raise ConfigError(f"{what}: mode='paper' preprocesses DICOMs only; give the DICOM, or processed=True")
        transform = BreastPreprocess(self.size, resize=o.resize, flip_to=o.flip_to,
                                     window="minmax" if o.window == "voi" else o.window, bits=o.bits)
        out, record = transform(_gray(pixels))
        if out.size and out.min() == out.max():
            raise DataError(f"{what}: the processed image holds the single value {out.flat[0]} (blank)")
        return out, record

    def __call__(self, image: Any, *, processed: bool | None = None, return_record: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, TransformRecord | None]:
        """The model's input for one image: ``(1, 1, H, W)`` float32, normalised as in evaluation.

        Args:
            image: A DICOM path, an image path, a numpy array or a PIL image.
            processed: See :meth:`pixels`.
            return_record: Also return the transform record (None for pixels given as processed
                without a sidecar).
        """
        pixels, record = self.pixels(image, processed=processed)
        tensor = normalize_images(to_tensor(pixels)[None], self.cfg)  # (1, 1, H, W)
        return (tensor, record) if return_record else tensor


def create_model_and_transforms(name_or_path: str | Path, pretrained: bool | str = True, *,
                                options: PreprocessOptions | None = None, **overrides: Any
                                ) -> tuple[MammoCLIP, ModelPreprocess]:
    """The model and the callable that prepares one image for it (open_clip's entry point).

    Args:
        name_or_path: A registered name (``mammoclip models list``), a checkpoint folder or an
            official ``.tar`` (converted in memory).
        pretrained: For a registered name, as :func:`mammoclip.models.create_model` (True: the
            config's sources; False: random; a path: those weights). Ignored for a checkpoint.
        options: Crop / flip / window settings of the callable (default: ``mammoclip preprocess``'s).
        **overrides: Config overrides for a registered name (``image_size=(H, W)``, ...).

    Returns:
        ``(model in eval mode, preprocess)``; ``model.encode_image(preprocess("x.dcm"))`` embeds one image.

    Raises:
        ConfigError: unknown name, overrides given with a checkpoint, weights that must be downloaded
            while the hub cannot be reached.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if overrides:
            raise ConfigError(f"{path}: a checkpoint is loaded as saved; config overrides {sorted(overrides)} "
                              "apply to registered names only")
        model = load_checkpoint(path)
    else:
        model = create_model(str(name_or_path), pretrained=pretrained, **overrides)
    model.eval()
    return model, ModelPreprocess(model.preprocess_cfg, options)


def from_pretrained(name_or_path: str | Path, *, options: PreprocessOptions | None = None
                    ) -> tuple[MammoCLIP, ModelPreprocess]:
    """``(model, preprocess)`` from a checkpoint folder, an official ``.tar`` or a registered name with its
    pretrained sources (Hugging Face's name for :func:`create_model_and_transforms` with ``pretrained=True``)."""
    return create_model_and_transforms(name_or_path, pretrained=True, options=options)
