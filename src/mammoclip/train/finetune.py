"""Full fine-tuning of the image tower with a task head, on the one training loop.

Fixes to the original (docs/original.md §6.2): label fractions are drawn per patient (not per row),
the best epoch is selected on a validation set carved from the training patients (never on test),
and the test split is scored once, with the selected weights. Rare positives are handled with a
``pos_weight`` computed from the *sampled* training rows (the original hard-codes it from all
folds) or, optionally, a class-balanced sampler.

The :class:`ClassifyTask` is registered in :mod:`mammoclip.train.tasks`, so :func:`mammoclip.train.loop.fit`
runs it like pre-training (AMP, checkpoints, resume, metrics.jsonl).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from mammoclip.data.datasets import ImageDataset
from mammoclip.data.manifest import Bundle
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate.features import check_image_size, image_batches
from mammoclip.evaluate.metrics import (
    DEFAULT_BOOTSTRAP,
    binary_metrics,
    evaluate_predictions,
    multiclass_metrics,
)
from mammoclip.evaluate.probe import test_predictions
from mammoclip.evaluate.splits import DEFAULT_VAL_FRACTION, assert_disjoint, carve_validation, sample_patients
from mammoclip.evaluate.tasks import TaskSpec
from mammoclip.train.config import LoopConfig, OptimConfig
from mammoclip.train.loop import CHECKPOINT_DIR, fit
from mammoclip.train.tasks import Task, register_task

#: Ways to counter class imbalance: a weighted loss (the original's weighted BCE) or a sampler.
BALANCING: tuple[str, ...] = ("weighted", "sampler", "none")


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults: docs/original.md §6.2 where it gives them)."""

    #: Epochs per fit (the original: 30 on VinDr, 20 on RSNA).
    epochs: int = 30
    #: Images per step (the original: 8 on VinDr).
    batch_size: int = 8
    #: AdamW learning rate and weight decay (docs/original.md §6.2).
    lr: float = 5e-5
    weight_decay: float = 1e-4
    #: Warm-up in epochs before the cosine decay (docs/original.md §6.2: one epoch).
    warmup_epochs: float = 1.0
    #: "weighted" (pos_weight / class weights), "sampler" (class-balanced sampling) or "none".
    balancing: str = "weighted"
    #: Dropout before the linear head (the original's encoder applies 0.4 / 0.3 for B5 / B2).
    dropout: float = 0.0
    #: Share of the sampled training patients held out for epoch selection.
    val_fraction: float = DEFAULT_VAL_FRACTION
    #: Loop precision ("fp32", "bf16", "fp16") and DataLoader workers.
    precision: str = "fp32"
    workers: int = 0
    #: Optional cap on optimizer steps per fit (smoke tests).
    max_steps: int | None = None
    #: "auto", "cpu" or "cuda".
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.balancing not in BALANCING:
            raise ConfigError(f"balancing must be one of {BALANCING}, got {self.balancing!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class ImageClassifier(nn.Module):
    """A MammoCLIP image tower + a linear head: ``(B, 1, H, W)`` -> ``(B, K)`` logits (K=1 for binary).

    Only the image path of the CLIP model is used; the text tower is frozen (no gradients) and
    left out of the exported state.
    """

    def __init__(self, clip: Any, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.clip = clip
        self.preprocess_cfg = clip.preprocess_cfg
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(clip.image_tower.num_features, n_outputs)
        for name, p in clip.named_parameters():
            if not name.startswith("image_tower."):
                p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.clip.image_features(images)  # (B, F)
        return self.head(self.dropout(feats))  # (B, K)


@register_task("classify")
class ClassifyTask(Task):
    """Supervised classification: batch ``{"image", "label"}`` -> weighted BCE (binary) or CE.

    Args:
        model: An :class:`ImageClassifier`.
        n_classes: 2 (binary, one logit) or more (softmax).
        class_weights: Binary: ``[pos_weight]``; multi-class: one weight per class; None: unweighted.
    """

    def __init__(self, model: nn.Module, n_classes: int, class_weights: Sequence[float] | None = None) -> None:
        super().__init__(model)
        self.n_classes = n_classes
        w = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.loss = nn.BCEWithLogitsLoss(pos_weight=w) if n_classes == 2 else nn.CrossEntropyLoss(weight=w)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"]).float()  # (B, K)
        self.loss.to(logits.device)
        if self.n_classes == 2:
            return {"loss": self.loss(logits[:, 0], batch["label"].float())}
        return {"loss": self.loss(logits, batch["label"].long())}

    def export(self, model: nn.Module, folder: Path) -> None:
        """State dict of what fine-tuning changes (image tower incl. BN statistics + head) as ``model.pt``."""
        state = {k: v for k, v in model.state_dict().items()
                 if not k.startswith("clip.") or k.startswith("clip.image_tower.")}
        torch.save(state, folder / "model.pt")


class LabeledImages(Dataset):
    """``{"image": (1, H, W) uint, "label": int}`` for the rows of a bundle."""

    def __init__(self, bundle: Bundle, labels: np.ndarray, image_size: tuple[int, int]) -> None:
        self.images = ImageDataset(bundle, image_size)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]["image"], "label": int(self.labels[index])}


class BalancedImages(Dataset):
    """A class-balanced resampling of :class:`LabeledImages` (same length, seeded per epoch).

    The loop owns the sampler, so balancing is done by the dataset: item ``i`` of epoch ``e`` maps
    to a row drawn with probability proportional to 1 / (its class's count).
    """

    def __init__(self, base: LabeledImages, seed: int) -> None:
        self.base = base
        counts = np.bincount(base.labels)
        w = 1.0 / counts[base.labels]
        self.p = w / w.sum()
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng(self.seed * 1000 + epoch)
        self.order = rng.choice(len(self.base), size=len(self.base), p=self.p)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[int(self.order[index])]


@torch.no_grad()
def predict(model: ImageClassifier, bundle: Bundle, n_classes: int, *, batch_size: int = 16,
            num_workers: int = 0) -> np.ndarray:
    """``(N, K)`` class probabilities of every row (eval mode)."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(bundle.images), n_classes))
    try:
        for idx, images in image_batches(model, bundle, batch_size=batch_size, num_workers=num_workers):
            logits = model(images).float()  # (B, 1) or (B, K)
            if n_classes == 2:
                p1 = torch.sigmoid(logits[:, 0]).cpu().numpy()
                out[idx.numpy()] = np.stack([1 - p1, p1], axis=1)
            else:
                out[idx.numpy()] = logits.softmax(-1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _class_weights(labels: np.ndarray, n_classes: int) -> list[float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    if n_classes == 2:
        return [counts[0] / max(counts[1], 1.0)]
    present = counts > 0
    w = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1.0)), 0.0)
    return w.tolist()


def finetune_once(
    clip: Any,
    bundle: Bundle,
    labels: np.ndarray,
    spec: TaskSpec,
    *,
    fraction: float,
    seed: int,
    cfg: FinetuneConfig,
    run_dir: str | Path,
) -> tuple[dict[str, Any], np.ndarray]:
    """Fine-tune one model on one (fraction, seed); select the epoch on val; score test once.

    Returns:
        ``(row of the data-efficiency table, (N_test, K) test probabilities)``.
    """
    k = len(spec.classes)
    images = bundle.images.reset_index(drop=True)
    is_test = (images["split"] == "test").to_numpy()
    assert_disjoint({"train": images[~is_test], "test": images[is_test]})
    pool = np.flatnonzero(~is_test)
    sampled = pool[sample_patients(images.iloc[pool].reset_index(drop=True), labels[pool], fraction, seed)]
    val_local = carve_validation(images.iloc[sampled].reset_index(drop=True), labels[sampled], cfg.val_fraction, seed)
    tr, va = sampled[~val_local], sampled[val_local]
    assert_disjoint({"train": images.iloc[tr], "val": images.iloc[va], "test": images[is_test]})
    if len(np.unique(labels[tr])) < 2:
        raise DataError("the sampled training patients have a single class; use a larger label fraction")

    def sub(rows: np.ndarray) -> Bundle:
        return Bundle(images.iloc[rows].reset_index(drop=True), bundle.boxes, bundle.reports, bundle.root)

    torch.manual_seed(seed)
    model = ImageClassifier(clip, 1 if k == 2 else k, cfg.dropout)
    size = tuple(clip.preprocess_cfg.image_size)
    labelled = LabeledImages(sub(tr), labels[tr], size)
    weights = _class_weights(labels[tr], k) if cfg.balancing == "weighted" else None
    train_ds: Dataset = BalancedImages(labelled, seed) if cfg.balancing == "sampler" else labelled
    task = ClassifyTask(model, k, weights)
    val_bundle, val_y = sub(va), labels[va]

    def evaluator(m: Any) -> dict[str, float]:
        if len(val_y) == 0:
            return {}
        p = predict(m, val_bundle, k, batch_size=cfg.batch_size)
        score = binary_metrics(val_y, p[:, 1])["auc"] if k == 2 else multiclass_metrics(val_y, p)["balanced_accuracy"]
        return {"val/score": float(score) if np.isfinite(score) else 0.0}

    loop = LoopConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=min(cfg.batch_size, len(tr)),
                      precision=cfg.precision, workers=cfg.workers, seed=seed, device=cfg.device,
                      best_metric="val/score", best_mode="max", log_every=10, keep_last=1)
    optim = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)
    result = fit(task, train_ds, loop=loop, optim=optim, run_dir=run_dir, evaluator=evaluator)
    if result.best is not None:
        best = torch.load(result.best / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(best, strict=False)
    # step checkpoints (optimizer state included) are only useful to resume a crashed fit.
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)
    probs = predict(model, sub(np.flatnonzero(is_test)), k, batch_size=cfg.batch_size)
    y_test = labels[is_test]
    test_metrics = binary_metrics(y_test, probs[:, 1]) if k == 2 else multiclass_metrics(y_test, probs)
    best_val = max((h.get("val/score", float("nan")) for h in result.history), default=float("nan"))
    row = {"fraction": fraction, "seed": seed, "val_score": best_val, "steps": result.steps,
           "n_train_patients": int(images.iloc[tr]["patient_id"].nunique()), "n_train_images": int(len(tr)),
           "n_val_images": int(len(va)), **{f"test_{m}": v for m, v in test_metrics.items()}}
    return row, probs


def run_finetune(
    model_factory: Callable[[str], nn.Module],
    bundle: Bundle,
    task: str | TaskSpec,
    *,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
    seeds: Sequence[int] = (0,),
    inits: Sequence[str] = ("pretrained",),
    out_dir: str | Path,
    cfg: FinetuneConfig | None = None,
    aggregate: str = "max",
    n_boot: int = DEFAULT_BOOTSTRAP,
    allow_resize: bool = False,
    model_name: str = "",
) -> dict[str, Any]:
    """Fine-tune for every (init, fraction, seed) and write the same run directory as the probe.

    Args:
        model_factory: ``init -> fresh MammoCLIP`` (called once per fit: fine-tuning changes it).
        bundle: Manifest with ``train``/``val``/``test`` splits.
        task: Task name or spec.
        out_dir: Run directory (fits go to ``out_dir/fits/<init>-f<fraction>-s<seed>``).
        cfg: Hyper-parameters.

    Returns:
        The results dict (as written to ``results.json``).
    """
    from mammoclip.evaluate.probe import sweep_inputs, write_classifier_run

    cfg = cfg or FinetuneConfig()
    spec, sub, labels = sweep_inputs(bundle, task, inits)
    out = Path(out_dir)
    rows, frames, metrics = [], [], {}
    top = max(fractions)
    for init in inits:
        for fraction in fractions:
            for seed in seeds:
                clip = model_factory(init)
                check_image_size(clip, sub, allow_resize=allow_resize)
                row, probs = finetune_once(clip, sub, labels, spec, fraction=fraction, seed=seed, cfg=cfg,
                                           run_dir=out / "fits" / f"{init}-f{fraction:g}-s{seed}")
                rows.append({"init": init, **row})
                pf = test_predictions(sub.images, labels, spec, probs, init=init, fraction=fraction, seed=seed)
                frames.append(pf)
                if fraction == top and seed == seeds[0]:
                    scored = evaluate_predictions(pf, spec.class_names, aggregate=aggregate, n_boot=n_boot)
                    metrics[f"{init} image"] = scored["image"]
                    metrics[f"{init} breast"] = scored["breast"]
    table = pd.DataFrame(rows)
    headline = "test_auc" if spec.binary else "test_accuracy"
    means = table.groupby(["init", "fraction"])[headline].mean()
    results: dict[str, Any] = {
        "kind": "finetune",
        "task": spec.name,
        "model": model_name,
        "aggregate": aggregate,
        "protocol": {"fractions": list(fractions), "seeds": list(seeds), "inits": list(inits),
                     "selection": "best epoch by val " + ("AUC" if spec.binary else "balanced accuracy"),
                     **{k: v for k, v in vars(cfg).items()}},
        "metrics": metrics,
        "data_efficiency": table.to_dict(orient="records"),
        "summary": {f"{init}@{fr:g} {headline}": float(v) for (init, fr), v in means.items()},
    }
    write_classifier_run(out, results, table, pd.concat(frames, ignore_index=True), spec, headline, label="fine-tune")
    return results
