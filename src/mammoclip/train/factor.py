"""Mammo-FActOR mapper training on the one training loop (docs/attribution.md, docs/original.md §7).

The image encoder of a trained MammoCLIP is frozen **bitwise**: it is not a registered submodule of
:class:`FactorModel` (so the optimizer never sees its parameters, ``model.train()`` never puts its
BatchNorms in training mode, and checkpoints hold the mapper alone), it runs under ``no_grad`` in eval
mode, and ``.to(device)`` still moves it. Only the stacked attribute heads learn, from image-level
labels of any manifest (``mass``, ``calcification`` ... columns).

When the training and validation feature maps fit in memory (:data:`FEATURE_CACHE_BYTES`, fp16), they
are computed once and the epochs run on them: the encoder's forward is nearly all the cost, and a
frozen encoder in eval mode gives the same maps every epoch. Augmentation (:class:`FeatureAugment`:
shifts and flips of the map, descriptor dropout) therefore acts on the maps, in the model's forward,
in training mode only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mammoclip.attribution.attributes import (
    AttributeSpec,
    attribute_embeddings,
    read_sentence_file,
    resolve_attributes,
)
from mammoclip.attribution.mapper import (
    DEFAULT_DESCRIPTOR_NORM,
    DEFAULT_LOSS_FORM,
    DEFAULT_TAP,
    FACTOR_TEMPERATURE,
    FactorMapper,
    check_tap,
    factor_loss,
    list_descriptor_norms,
    list_loss_forms,
    load_mapper,
    save_mapper,
    tap_feature_map,
)
from mammoclip.data.datasets import ImageDataset
from mammoclip.data.manifest import Bundle, load_bundle
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate.features import check_image_size, image_batches, resolve_model
from mammoclip.train.config import LoopConfig, OptimConfig
from mammoclip.train.loop import FitResult, fit, list_checkpoints
from mammoclip.train.tasks import Task, register_task, unwrap

#: Largest in-memory feature cache (fp16 bytes) used when ``cache_features`` is None (auto).
FEATURE_CACHE_BYTES: int = 4 * 2**30


@dataclass
class FactorConfig:
    """Mapper training settings (defaults: the notebook's, docs/original.md §7, where it gives them)."""

    #: Attribute names, in head order (built-in: mass, calcification, distortion, asymmetry, malignancy).
    attributes: list[str] = field(default_factory=lambda: ["mass", "calcification"])
    #: Optional JSON of extra sentences / new attributes (``mammoclip.attribution.read_sentence_file``).
    sentences: str | None = None
    #: Epochs (the notebook: 20) and images per step (the notebook: 8).
    epochs: int = 20
    batch_size: int = 8
    #: AdamW learning rate and weight decay (the notebook: 1e-4 and torch's default 0.01).
    lr: float = 1e-4
    weight_decay: float = 0.01
    #: Hidden width of every head (None: h*w, the notebook's 1392 at 1520x912).
    hidden: int | None = None
    #: "corrected" (negatives-only denominator) or "original" (the notebook's; see docs/attribution.md).
    loss_form: str = DEFAULT_LOSS_FORM
    temperature: float = FACTOR_TEMPERATURE
    #: Feature map the heads read: None = the last one (the original), -2 = the stride-16 level of
    #: ``forward_intermediates`` (the default, docs/attribution.md §5), -3 = stride 8.
    tap: int | None = DEFAULT_TAP
    #: Loop precision ("fp32", "bf16", "fp16"), DataLoader workers, device ("auto", "cpu", "cuda").
    precision: str = "fp32"
    workers: int = 0
    device: str = "auto"
    #: Optional cap on optimizer steps (smoke tests).
    max_steps: int | None = None
    #: Splits used for training and for selecting the best epoch (lowest validation loss).
    train_split: str = "train"
    val_split: str = "val"
    #: Precompute feature maps once (True), never (False), or when they fit FEATURE_CACHE_BYTES (None).
    cache_features: bool | None = None
    #: Resize images whose size differs from the model's instead of failing.
    allow_resize: bool = False
    seed: int = 10
    #: Training-time augmentation of the feature maps (docs/attribution.md §2, §5): each training image's
    #: map is translated by up to ``shift`` cells in each direction (zero fill) and flipped left-right /
    #: up-down with probability 1/2 when ``hflip`` / ``vflip``, the same transform for all its channels,
    #: so heads whose weights are tied to cell positions cannot memorise where the training lesions were.
    #: Applied to cached maps too; validation and heatmaps never see it. 0 / False: the original.
    shift: int = 0
    hflip: bool = False
    vflip: bool = False
    #: Dropout on the channel descriptors (each cell of each channel map) during training.
    descriptor_dropout: float = 0.0
    #: Transform of the map before the heads (``mammoclip.attribution.mapper.list_descriptor_norms``:
    #: ``none``, the original; ``image``: one scale per image; ``channel``: each channel standardised;
    #: ``sorted``: each channel's values sorted, a translation-invariant descriptor, not the original's).
    descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM
    #: Give each head the channel's index besides its map (``FactorMapper(channel_ids=True)``; a deviation).
    channel_ids: bool = False

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ConfigError("factor: give at least one attribute")
        check_tap(self.tap)
        if self.loss_form not in list_loss_forms():
            raise ConfigError(f"factor: loss_form must be one of {list_loss_forms()}, got {self.loss_form!r}")
        if self.temperature <= 0 or self.lr <= 0 or self.batch_size < 2 or self.epochs < 1:
            raise ConfigError("factor: temperature and lr must be > 0, batch_size >= 2 (the loss contrasts "
                              "images of a batch) and epochs >= 1")
        if self.descriptor_norm not in list_descriptor_norms():
            raise ConfigError(f"factor: descriptor_norm must be one of {list_descriptor_norms()}, "
                              f"got {self.descriptor_norm!r}")
        if self.shift < 0 or not 0.0 <= self.descriptor_dropout < 1.0:
            raise ConfigError(f"factor: shift must be >= 0 cells and descriptor_dropout in [0, 1), got "
                              f"{self.shift} and {self.descriptor_dropout}")

    @property
    def augment(self) -> FeatureAugment:
        """The feature-map augmentation these settings ask for."""
        return FeatureAugment(self.shift, self.hflip, self.vflip, self.descriptor_dropout)


@dataclass(frozen=True)
class FeatureAugment:
    """Random per-image transforms of ``(B, C, h, w)`` feature maps, identical across an image's channels.

    A channel's descriptor is its whole spatial map, so a head weighs each cell separately; with a
    few hundred positive images it can learn where the training lesions happened to be instead of
    what a lesion looks like (docs/attribution.md §5). Moving every channel of an image together keeps
    the map a valid feature map of a (shifted / mirrored) breast while changing where its content lies.
    """

    #: Largest translation in cells, drawn uniformly in ``[-shift, shift]`` per axis; vacated cells are 0.
    shift: int = 0
    hflip: bool = False
    vflip: bool = False
    #: Probability of zeroing each descriptor entry (rescaled by ``1 / (1 - p)``, as ``nn.Dropout``).
    dropout: float = 0.0

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.hflip or self.vflip or self.dropout > 0

    def __call__(self, fmap: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented copy of ``fmap`` (B, C, h, w); the draws come from ``generator`` (None: torch's global)."""
        if not self.active:
            return fmap
        b, _, h, w = fmap.shape
        dev = fmap.device

        def draw(n: int, high: int) -> torch.Tensor:  # (n,) ints in [0, high), on the CPU generator
            return torch.randint(0, high, (n,), generator=generator)

        out = fmap
        if self.hflip:
            out = torch.where(draw(b, 2).bool().to(dev)[:, None, None, None], out.flip(-1), out)
        if self.vflip:
            out = torch.where(draw(b, 2).bool().to(dev)[:, None, None, None], out.flip(-2), out)
        if self.shift > 0:
            k = self.shift
            dy, dx = draw(b, 2 * k + 1) - k, draw(b, 2 * k + 1) - k  # (B,), (B,) in [-k, k]
            padded = F.pad(out, (k, k, k, k))  # (B, C, h + 2k, w + 2k), zeros around
            # content at (i, j) moves to (i + dy, j + dx): read the padded map from offset (k - dy, k - dx)
            out = torch.stack([padded[i, :, k - int(dy[i]): k - int(dy[i]) + h, k - int(dx[i]): k - int(dx[i]) + w]
                               for i in range(b)])
        if self.dropout > 0:
            keep = (torch.rand(out.shape, generator=generator) >= self.dropout).to(dev)
            out = out * keep / (1.0 - self.dropout)
        return out


class FactorModel(nn.Module):
    """A frozen MammoCLIP image encoder (unregistered) + a trainable :class:`FactorMapper`.

    ``forward(batch)`` reads ``batch["fmap"]`` (precomputed) or encodes ``batch["image"]`` and returns
    ``(B, C, A)`` channel-attribute similarities. In training mode the map first goes through
    ``augment`` (on the map, not the image: cached maps stay valid); in eval mode (validation) it does not.
    """

    def __init__(self, clip: nn.Module, mapper: FactorMapper, augment: FeatureAugment | None = None) -> None:
        super().__init__()
        self.mapper = mapper
        self.tap = mapper.tap
        self.augment = augment or FeatureAugment()
        clip.eval()
        for p in clip.parameters():
            p.requires_grad_(False)
        self._clip = [clip]  # a list: not a submodule, so not trained, not in train mode, not in state_dict

    @property
    def clip(self) -> Any:
        return self._clip[0]

    @property
    def preprocess_cfg(self) -> Any:
        return self.clip.preprocess_cfg

    def _apply(self, fn: Any, recurse: bool = True) -> FactorModel:  # .to(), .cuda(), .half() reach the encoder
        super()._apply(fn, recurse)
        self.clip._apply(fn, recurse)
        return self

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` normalised -> ``(B, C, h, w)`` at the mapper's tap, encoder in eval mode, no graph."""
        self.clip.eval()
        with torch.no_grad():
            return tap_feature_map(self.clip, images, self.tap)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        fmap = batch["fmap"] if "fmap" in batch else self.feature_map(batch["image"])  # (B, C, h, w)
        fmap = fmap.float()
        if self.training:
            fmap = self.augment(fmap)
        return self.mapper.similarities(fmap)  # (B, C, A)


@register_task("factor")
class FactorTask(Task):
    """Mapper training: ``{"image" | "fmap", "labels" (B, A)}`` -> the FActOR loss.

    Args:
        model: A :class:`FactorModel`.
        temperature: τ of the loss.
        loss_form: A name from :func:`mammoclip.attribution.mapper.list_loss_forms`.
        export_extra: Provenance written into ``mapper.json`` (checkpoint, loss form, ...).
    """

    def __init__(self, model: nn.Module, temperature: float = FACTOR_TEMPERATURE, loss_form: str = DEFAULT_LOSS_FORM,
                 export_extra: dict[str, Any] | None = None) -> None:
        super().__init__(model)
        self.temperature = temperature
        self.loss_form = loss_form
        self.export_extra = export_extra or {}

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        sim = self.model(batch)  # (B, C, A)
        return {"loss": factor_loss(sim, batch["labels"], temperature=self.temperature, form=self.loss_form)}

    def num_items(self, batch: Mapping[str, Any]) -> int:
        return int(batch["labels"].shape[0])

    def export(self, model: nn.Module, folder: Path) -> None:
        """``mapper.safetensors`` + ``mapper.json`` (loadable with ``load_mapper``); the encoder is not copied."""
        save_mapper(cast(FactorModel, unwrap(model)).mapper, folder, {"loss_form": self.loss_form, "temperature": self.temperature,
                                                   **self.export_extra})


def attribute_labels(bundle: Bundle, specs: Sequence[AttributeSpec], source: str = "manifest") -> tuple[np.ndarray, np.ndarray]:
    """``(N, A)`` 0/1 labels and the ``(N,)`` mask of rows where every attribute's label is known.

    Raises:
        DataError: a label column is missing, or holds values other than 0/1/empty.
    """
    images = bundle.images
    missing = [f"{s.label_column!r} (for {s.name!r})" for s in specs if s.label_column not in images.columns]
    if missing:
        raise DataError(f"{source}: no label column {', '.join(missing)}; FActOR trains on image-level 0/1 labels "
                        f"of the attributes (columns present: {sorted(images.columns)})")
    cols = []
    for s in specs:
        values = images[s.label_column].to_numpy(dtype=float)
        bad = np.isfinite(values) & ~np.isin(values, (0.0, 1.0))
        if bad.any():
            raise DataError(f"{source}: row {int(np.flatnonzero(bad)[0])}, column {s.label_column!r}: "
                            "expected 0, 1 or empty")
        cols.append(values)
    y = np.stack(cols, axis=1)  # (N, A)
    known = np.isfinite(y).all(axis=1)
    return np.nan_to_num(y).astype(np.int64), known


class LabelledImages(Dataset):
    """``{"image": (1, H, W) uint, "labels": (A,) float}`` for the rows of a bundle."""

    def __init__(self, bundle: Bundle, labels: np.ndarray, image_size: tuple[int, int]) -> None:
        self.images = ImageDataset(bundle, image_size)
        self.labels = torch.from_numpy(labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]["image"], "labels": self.labels[index]}


class FeatureMaps(Dataset):
    """``{"fmap": (C, h, w) float, "labels": (A,) float}`` from precomputed fp16 feature maps."""

    def __init__(self, fmaps: torch.Tensor, labels: np.ndarray) -> None:
        self.fmaps = fmaps
        self.labels = torch.from_numpy(labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"fmap": self.fmaps[index].float(), "labels": self.labels[index]}


@torch.no_grad()
def feature_maps(clip: Any, bundle: Bundle, *, batch_size: int = 16, num_workers: int = 0,
                 tap: int | None = None) -> torch.Tensor:
    """``(N, C, h, w)`` fp16 feature maps (at ``tap``) of every row (encoder in eval mode), in manifest order."""
    was = clip.training
    clip.eval()
    out: torch.Tensor | None = None
    try:
        for idx, images in image_batches(clip, bundle, batch_size=batch_size, num_workers=num_workers):
            f = tap_feature_map(clip, images, tap).half().cpu()  # (B, C, h, w)
            if out is None:
                out = torch.zeros((len(bundle.images), *f.shape[1:]), dtype=torch.float16)
            out[idx] = f
    finally:
        clip.train(was)
    assert out is not None
    return out


def feature_shape(clip: Any, tap: int | None = None) -> tuple[int, int, int]:
    """``(C, h, w)`` of the encoder's feature map at ``tap`` (None: the last) at the model's input size."""
    h, w = clip.preprocess_cfg.image_size
    device = next(clip.parameters()).device
    was = clip.training
    clip.eval()
    with torch.no_grad():
        f = tap_feature_map(clip, torch.zeros(1, 1, h, w, device=device), tap)  # (1, C, h', w')
    clip.train(was)
    return int(f.shape[1]), int(f.shape[2]), int(f.shape[3])


def image_fingerprint(clip: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the image tower's weights: the mapper is only valid on this encoder."""
    h = hashlib.sha256()
    for name, tensor in sorted(clip.state_dict().items()):
        if name.startswith("image_tower."):
            t = tensor.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class FactorRun:
    """What :func:`train_factor` returns."""

    fit: FitResult
    #: Folder holding the selected mapper (``run_dir/best``, or the last checkpoint without validation).
    mapper_dir: Path
    mapper: FactorMapper
    attributes: list[AttributeSpec]


def train_factor(
    checkpoint: str | Path | nn.Module,
    manifest: str | Path | Bundle,
    cfg: FactorConfig | None = None,
    *,
    out_dir: str | Path,
    resume: bool | str | Path = False,
) -> FactorRun:
    """Train a FActOR mapper on a frozen MammoCLIP encoder.

    Args:
        checkpoint: Checkpoint folder, registry name or a loaded MammoCLIP.
        manifest: Manifest (or folder, or bundle) with the attributes' label columns and train/val splits.
        cfg: Settings.
        out_dir: Run folder (``args.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``best/``).
        resume: As :func:`mammoclip.train.loop.fit`.

    Raises:
        DataError: missing label columns, images of another size than the model's, a split with too
            few labelled images.
    """
    cfg = cfg or FactorConfig()
    bundle = manifest if isinstance(manifest, Bundle) else load_bundle(manifest)
    source = str(manifest if not isinstance(manifest, Bundle) else bundle.root)
    clip: Any = checkpoint if isinstance(checkpoint, nn.Module) else resolve_model(checkpoint)
    extra = read_sentence_file(cfg.sentences) if cfg.sentences else None
    specs = resolve_attributes(cfg.attributes, extra)
    labels, known = attribute_labels(bundle, specs, source)
    check_image_size(clip, bundle, allow_resize=cfg.allow_resize, source=source)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    clip = clip.to(device).eval()
    out = Path(out_dir)
    text = attribute_embeddings(clip, specs, cache_dir=out / "cache")  # (A, D)
    torch.manual_seed(cfg.seed)
    mapper = FactorMapper(specs, text, feature_shape(clip, cfg.tap), tuple(clip.preprocess_cfg.image_size), cfg.hidden,
                          cfg.tap, cfg.descriptor_norm, cfg.channel_ids)

    def part(split: str) -> tuple[Bundle, np.ndarray]:
        rows = np.flatnonzero((bundle.images["split"] == split).to_numpy() & known)
        sub = Bundle(bundle.images.iloc[rows].reset_index(drop=True), bundle.boxes, bundle.reports, bundle.root)
        return sub, labels[rows]

    train_b, train_y = part(cfg.train_split)
    val_b, val_y = part(cfg.val_split)
    if len(train_y) < cfg.batch_size:
        raise DataError(f"{source}: split {cfg.train_split!r} has {len(train_y)} images with known labels for "
                        f"{[s.name for s in specs]}; at least batch_size={cfg.batch_size} are needed")
    if not train_y.any():
        raise DataError(f"{source}: no positive image for any of {[s.name for s in specs]} in split {cfg.train_split!r}")
    c, h, w = mapper.feature_shape
    cache = cfg.cache_features
    if cache is None:
        cache = (len(train_y) + len(val_y)) * c * h * w * 2 <= FEATURE_CACHE_BYTES
    size = tuple(clip.preprocess_cfg.image_size)
    train_ds: Dataset
    val_ds: Dataset | None
    if cache:
        train_ds = FeatureMaps(feature_maps(clip, train_b, num_workers=cfg.workers, tap=cfg.tap), train_y)
        val_ds = FeatureMaps(feature_maps(clip, val_b, num_workers=cfg.workers, tap=cfg.tap), val_y) \
            if len(val_y) else None
    else:
        train_ds = LabelledImages(train_b, train_y, size)
        val_ds = LabelledImages(val_b, val_y, size) if len(val_y) else None
    provenance = {"checkpoint": str(checkpoint) if not isinstance(checkpoint, nn.Module) else
                  getattr(clip.cfg, "name", "model"), "image_fingerprint": image_fingerprint(clip)}
    task = FactorTask(FactorModel(clip, mapper, cfg.augment), cfg.temperature, cfg.loss_form, provenance)
    loop = LoopConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size, precision=cfg.precision,
                      workers=cfg.workers, seed=cfg.seed, device=str(device), log_every=10, keep_last=2,
                      best_metric="val/loss", best_mode="min")
    optim = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="constant", warmup_epochs=0.0)
    result = fit(task, train_ds, loop=loop, optim=optim, run_dir=out, val_data=val_ds, resume=resume,
                 config={"task": "factor", "checkpoint": provenance["checkpoint"], "manifest": source,
                         "factor": dataclasses.asdict(cfg)})
    chosen = result.best if result.best is not None else (list_checkpoints(out) or [out])[-1]
    best, _ = load_mapper(chosen)
    return FactorRun(result, chosen, best, specs)

