"""Frozen image features: model resolution, image streaming, extraction and an on-disk cache.

Features are extracted once per (model weights, manifest, image size, kind) with the model in
``eval()`` mode under ``torch.no_grad()``: BatchNorm uses its running statistics and dropout is
off, which is what makes the probe a *linear probe* (the original keeps the encoder in train mode,
docs/original.md §6.2). The cache key hashes the weights themselves, so a retrained checkpoint in the
same folder never reuses stale features.

Under torchrun each process extracts its contiguous share of the rows
(:func:`mammoclip.evaluate.distributed.shard_range`) and every process gets all rows back in manifest
order, so the arrays equal one process's; only rank 0 shows progress and writes the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mammoclip.data.datasets import ImageDataset
from mammoclip.data.manifest import Bundle
from mammoclip.data.transforms import normalize_images
from mammoclip.errors import DataError
from mammoclip.evaluate import distributed as D
from mammoclip.imaging.imageio import read_image
from mammoclip.progress import progress_bar

#: Feature kinds: pooled image-tower features (before projection) or the projected, L2-normalised
#: joint embedding.
FEATURE_KINDS: tuple[str, ...] = ("pooled", "projected")


def resolve_model(spec: str | Path, **overrides: Any) -> torch.nn.Module:
    """A model from a checkpoint directory or a registry name (``mammoclip models list``).

    The parts of a registry model that no pretrained file provides are initialised under a fixed
    seed (:func:`mammoclip.evaluate.distributed.seeded`), so every process of a torchrun job, and
    every run, builds the same weights.

    Raises:
        ConfigError / CheckpointError: from the model layer, naming the problem.
    """
    from mammoclip.models import create_model, load_checkpoint

    path = Path(spec)
    if path.exists():
        return load_checkpoint(path)
    return D.seeded(lambda: create_model(str(spec), **overrides))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def check_image_size(model: Any, bundle: Bundle, *, allow_resize: bool = False, source: str = "manifest") -> None:
    """Fail when the manifest's images do not have the model's input size.

    Silently resizing would evaluate the model on images it was not trained on (different crop
    and scale); the user decides: preprocess the images to the model's size, or allow resizing.

    Raises:
        DataError: naming both sizes and the two ways out.
    """
    if allow_resize or len(bundle.images) == 0:
        return
    want = tuple(model.preprocess_cfg.image_size)
    images = bundle.images
    if {"height", "width"} <= set(images.columns) and images["height"].notna().all():
        sizes = set(zip(images["height"].astype(int), images["width"].astype(int)))
    else:
        sizes = {tuple(read_image(bundle.abspath(str(images["path"].iloc[0]))).shape[:2])}
    bad = sorted(s for s in sizes if s != want)
    if bad:
        raise DataError(
            f"{source}: images are {bad[0][0]}x{bad[0][1]} (HxW) but the model expects {want[0]}x{want[1]}; "
            "preprocess the images to the model's size "
            f"(`mammoclip preprocess SOURCE --out DIR --size {want[0]}x{want[1]}`) "
            "or pass --allow-resize to resize them on the fly"
        )


def image_batches(
    model: Any, bundle: Bundle, *, batch_size: int = 16, num_workers: int = 0, rows: range | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream ``(indices (B,), normalised images (B, 1, H, W))`` over the manifest rows, in order.

    Decoding and resizing run in DataLoader workers, so with ``num_workers > 0`` they overlap with
    the model's forward; normalisation runs on the model's device.

    Args:
        rows: The manifest rows to stream (default: all); the indices stay the manifest's.
    """
    dataset = ImageDataset(bundle, tuple(model.preprocess_cfg.image_size))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=rows if rows is not None else range(len(dataset)),
        num_workers=num_workers,
        pin_memory=model_device(model).type == "cuda",
        persistent_workers=False,
    )
    device = model_device(model)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)  # (B, 1, H, W) uint
        yield batch["index"], normalize_images(images, model.preprocess_cfg)


@torch.no_grad()
def extract_features(
    model: Any,
    bundle: Bundle,
    *,
    kinds: tuple[str, ...] = ("pooled",),
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool | None = False,
) -> dict[str, np.ndarray]:
    """Frozen features of every manifest row, in manifest order.

    The model is put in ``eval()`` mode for the extraction and its previous mode restored after;
    nothing is updated (no gradients, BatchNorm statistics untouched). Under torchrun each process
    computes its share of the rows and every process returns all of them.

    Returns:
        ``kind -> (N, F)`` float32 arrays.
    """
    unknown = set(kinds) - set(FEATURE_KINDS)
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}; choose from {FEATURE_KINDS}")

    def share(rows: range) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        bar = progress_bar(len(rows), "features", "img", enabled=progress if D.job().is_primary else False)
        for _, images in image_batches(model, bundle, batch_size=batch_size, num_workers=num_workers, rows=rows):
            if "pooled" in kinds:
                parts["pooled"].append(model.image_features(images).float().cpu().numpy())  # (B, F)
            if "projected" in kinds:
                parts["projected"].append(model.encode_image(images, normalize=True).float().cpu().numpy())  # (B, D)
            bar.update(len(images))
        bar.close()
        return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}

    was_training = model.training
    model.eval()
    try:
        return D.sharded(len(bundle.images), share, what="image features")
    finally:
        model.train(was_training)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def manifest_fingerprint(bundle: Bundle) -> str:
    """SHA-256 of the rows' ids and files (path, size, modification time)."""
    h = hashlib.sha256()
    for image_id, rel in zip(bundle.images["image_id"].astype(str), bundle.images["path"].astype(str)):
        p = bundle.abspath(rel)
        st = p.stat() if p.exists() else None
        h.update(f"{image_id}|{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def cached_features(
    model: Any,
    bundle: Bundle,
    cache_dir: str | Path | None,
    *,
    kinds: tuple[str, ...] = ("pooled",),
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`extract_features`, read from / written to ``cache_dir`` when given.

    The cache file name is a hash of the model weights, the manifest rows and files, the input
    size and the kinds; it stores the image ids too, which are checked on load.
    """
    if cache_dir is None:
        return extract_features(model, bundle, kinds=kinds, batch_size=batch_size, num_workers=num_workers,
                                progress=progress)
    key = hashlib.sha256(
        "|".join([model_fingerprint(model), manifest_fingerprint(bundle),
                  str(tuple(model.preprocess_cfg.image_size)), ",".join(sorted(kinds))]).encode()
    ).hexdigest()[:24]
    path = Path(cache_dir) / f"features-{key}.npz"
    ids = bundle.images["image_id"].astype(str).to_numpy().astype("U")

    def read() -> dict[str, np.ndarray] | None:
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in kinds} if np.array_equal(data["image_id"], ids) else None

    # rank 0 decides and sends the hit: every rank must take the same branch (the extraction below is a
    # collective), even on machines that do not share the cache folder.
    hit = D.on_primary(read)
    if hit is not None:
        return hit
    feats = extract_features(model, bundle, kinds=kinds, batch_size=batch_size, num_workers=num_workers,
                             progress=progress)
    if D.job().is_primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **{"image_id": ids, **feats})
        tmp.replace(path)
    return feats
