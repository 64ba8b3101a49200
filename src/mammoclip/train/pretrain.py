"""Mammo-CLIP pre-training: ``pretrain(config) -> run_dir``, the API behind ``mammoclip pretrain``.

Builds the model (``mammoclip.models.create_model``), the mixed image-text + image-label datasets,
the loss with this process's rank and world size, the :class:`~mammoclip.train.tasks.PretrainTask`,
an optional zero-shot validation metric, and hands them to :func:`mammoclip.train.loop.fit`. The
same call runs in one process or in each torchrun process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mammoclip.data.datasets import (
    ImageTextDataset,
    LabelTextDataset,
    MixedDataset,
    PairCollate,
    default_text_augmenter,
)
from mammoclip.data.manifest import Bundle, load_bundle
from mammoclip.data.transforms import build_augmentation
from mammoclip.errors import ConfigError, DataError
from mammoclip.losses import create_loss
from mammoclip.train import distributed as D
from mammoclip.train.config import RunConfig, load_config
from mammoclip.train.loop import FitResult, fit
from mammoclip.train.tasks import build_task

#: Dataset kind (config key under ``data``) -> class.
DATASET_KINDS: dict[str, type] = {"image_text": ImageTextDataset, "image_label": LabelTextDataset}


def build_model(cfg: RunConfig) -> nn.Module:
    """Create the model the config names, at the configured input size."""
    from mammoclip.models import create_model

    path = Path(cfg.model.name)
    if path.is_dir():
        from mammoclip.models import load_checkpoint

        model = load_checkpoint(path)
        if cfg.data.image_size is not None and tuple(model.preprocess_cfg.image_size) != cfg.data.image_size:
            raise ConfigError(f"{path} was trained at {tuple(model.preprocess_cfg.image_size)}; set data.image_size "
                              "to that size (or null)")
    else:
        overrides = dict(cfg.model.overrides)
        if cfg.data.image_size is not None:
            overrides["image_size"] = cfg.data.image_size  # recorded in the checkpoint's preprocessing config
        model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, **overrides)
    if cfg.model.lock_text:
        model.lock_text_tower()
    if cfg.model.lock_image:
        model.lock_image_tower()
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _bundle(path: str) -> Bundle:
    try:
        return load_bundle(path)
    except FileNotFoundError as err:
        raise DataError(f"manifest not found: {path}") from err


def build_datasets(cfg: RunConfig, image_size: tuple[int, int]) -> tuple[Dataset, Dataset | None]:
    """Training and validation datasets mixing every configured manifest."""
    augment = build_augmentation(cfg.data.augment)
    train_parts, val_parts = [], []
    for kind, paths in (("image_text", cfg.data.image_text), ("image_label", cfg.data.image_label)):
        cls = DATASET_KINDS[kind]
        extra: dict[str, Any] = {}
        if kind == "image_text":
            extra["text_augmenter"] = default_text_augmenter(cfg.data.text_augment) or _identity_text
            extra["per_breast"] = cfg.data.per_breast_captions
        for path in paths:
            bundle = _bundle(path)
            tr = cls(bundle.split(cfg.data.train_split), image_size, augment=augment, train=True,
                     seed=cfg.loop.seed, **extra)
            va = cls(bundle.split(cfg.data.val_split), image_size, train=False, seed=cfg.loop.seed, **extra)
            if len(tr) == 0:
                raise DataError(f"{path}: no usable {kind.replace('_', '-')} breasts in split {cfg.data.train_split!r}")
            train_parts.append(tr)
            if len(va):
                val_parts.append(va)
    train = MixedDataset(train_parts)
    val = MixedDataset(val_parts) if val_parts else None
    return train, val


def _identity_text(text: str, rng: Any) -> str:
    return text


def zero_shot_evaluator(cfg: RunConfig) -> Callable[[nn.Module], Mapping[str, float]] | None:
    """Epoch-end zero-shot AUC/accuracy on the validation split of the first manifest (``eval.zero_shot``)."""
    if not cfg.eval.zero_shot:
        return None
    from mammoclip.evaluate.zeroshot import run_zeroshot

    bundle = _bundle((cfg.data.image_text or cfg.data.image_label)[0])

    def evaluate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for task in cfg.eval.zero_shot:
            res = run_zeroshot(model, bundle, task, prompts=cfg.eval.prompt_style, split=cfg.data.val_split,
                               n_boot=0, allow_resize=True)
            for k, v in res["summary"].items():
                out[f"zeroshot/{task}/{k}"] = float(v)
        return out

    return evaluate


def pretrain(
    config: RunConfig | str | Path,
    overrides: list[str] | None = None,
    *,
    resume: bool | str | Path = False,
    out_dir: str | Path | None = None,
) -> Path:
    """Pre-train a Mammo-CLIP model; returns the run folder.

    Args:
        config: A :class:`RunConfig` or a YAML preset path.
        overrides: ``key=value`` strings applied on top of the preset.
        resume: Continue from the latest checkpoint of the run folder (or from a given checkpoint).
        out_dir: The run folder (default: ``config.out_dir / config.run_name``).

    Returns:
        The run folder: ``args.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``best/`` (a model
        checkpoint loadable with ``mammoclip.models.load_checkpoint``).

    Example:
        >>> run = pretrain("configs/pretrain-lite-cpu.yaml", ["data.image_text=[cohort]"])  # doctest: +SKIP
    """
    return run_pretraining(config, overrides, resume=resume, out_dir=out_dir).run_dir


def run_pretraining(
    config: RunConfig | str | Path,
    overrides: list[str] | None = None,
    *,
    resume: bool | str | Path = False,
    out_dir: str | Path | None = None,
) -> FitResult:
    """:func:`pretrain`, returning the full :class:`~mammoclip.train.loop.FitResult`."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    if isinstance(config, RunConfig) and overrides:
        raise ConfigError("pass overrides with a YAML path, or apply them to the RunConfig yourself")
    run_dir = Path(out_dir) if out_dir is not None else cfg.run_dir
    dist = D.init_distributed(cfg.loop.device)
    torch.manual_seed(cfg.loop.seed)
    model = build_model(cfg)
    image_size = tuple(model.preprocess_cfg.image_size)
    from mammoclip.models import get_tokenizer

    train, val = build_datasets(cfg, image_size)
    loss = create_loss(cfg.loss.name, rank=dist.rank, world_size=dist.world_size, **cfg.loss.kwargs)
    task = build_task(cfg.task, model=model, loss=loss)
    steps = len(train) // (cfg.loop.batch_size * dist.world_size)
    if steps < 1:
        raise DataError(f"{len(train)} training breasts: fewer than one batch of {cfg.loop.batch_size} x "
                        f"{dist.world_size} rank(s); lower loop.batch_size")
    result = fit(task, train, loop=cfg.loop, optim=cfg.optim, run_dir=run_dir, collate=PairCollate(get_tokenizer(model)),
                 val_data=val, evaluator=zero_shot_evaluator(cfg), resume=resume,
                 config={**cfg.to_dict(), "resolved": {"image_size": list(image_size), "world_size": dist.world_size,
                                                       "steps_per_epoch": steps}},
                 dist=dist)
    return result
