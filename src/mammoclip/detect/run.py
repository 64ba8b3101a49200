"""Train, evaluate and run a detector: the functions behind ``mammoclip detect train | eval | predict``.

The training loop is a plain one (AdamW, gradient clipping, fp32) kept inside the ``detect`` package,
because a library package must not import the trainer (docs/architecture.md, design rule 1). Model
selection uses the **validation** split only: the manifest's ``val`` rows, or, when there are none,
patients carved from the training split (stratified on having a box). The test split is read only
by :func:`evaluate_detector`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from mammoclip.data.manifest import TRANSFORM_COLUMNS, Bundle, load_bundle
from mammoclip.detect.config import DetectorCfg, DetectTrainCfg
from mammoclip.detect.data import DetectionDataset, collate, gather_boxes, scale_boxes
from mammoclip.detect.metrics import ClassMatches, bootstrap_class_metrics, match_class
from mammoclip.detect.model import MammoDetector, build_detector, count_parameters
from mammoclip.errors import DataError
from mammoclip.evaluate.report import write_results
from mammoclip.evaluate.splits import carve_validation, sample_patients
from mammoclip.imaging.breast import TransformRecord
from mammoclip.models import MammoCLIP
from mammoclip.models.checkpoint import provenance

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
IMAGES_FILE = "images.csv"
#: Images drawn into ``overlays/`` by default (positives first, then the highest-scoring negatives).
DEFAULT_OVERLAYS = 8
#: Protocols every evaluation reports: every image of the split (ours), and the paper's positive images only.
PROTOCOLS: tuple[str, ...] = ("all_images", "positives_only")


@dataclass
class DetectRun:
    """What :func:`train_detector` produced."""

    out_dir: Path
    #: The detector checkpoint selected on validation AP@0.5 (None if no epoch was evaluated).
    best: Path | None
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    detector: MammoDetector | None = None


def _bundle(manifest: str | Path | Bundle) -> Bundle:
    return manifest if isinstance(manifest, Bundle) else load_bundle(manifest)


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _subset(bundle: Bundle, mask: np.ndarray) -> Bundle:
    images = bundle.images[mask].reset_index(drop=True)
    ids = set(images["image_id"].astype(str))
    return Bundle(images, bundle.boxes[bundle.boxes["image_id"].astype(str).isin(ids)].reset_index(drop=True),
                  bundle.reports, bundle.root)


def _has_box(bundle: Bundle, targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.array([len(targets[str(i)][0]) > 0 for i in bundle.images["image_id"]], dtype=np.int64)


def select_training_data(bundle: Bundle, det_cfg: DetectorCfg, run_cfg: DetectTrainCfg,
                         log_fn: Callable[[str], None]) -> tuple[Bundle, Bundle]:
    """Training rows at the label fraction, and the validation rows (the ``val`` split or carved)."""
    train = bundle.split("train")
    if len(train.images) == 0:
        raise DataError(f"{bundle.root / 'manifest.csv'}: no rows with split == 'train'")
    targets, _ = gather_boxes(train, det_cfg.classes, require=True)
    val = bundle.split("val")
    if len(val.images) == 0:
        val_mask = carve_validation(train.images, _has_box(train, targets), seed=run_cfg.seed)
        val, train = _subset(train, val_mask), _subset(train, ~val_mask)
        log_fn(f"no 'val' split: carved {val.images['patient_id'].nunique()} training patients for validation")
    if run_cfg.label_fraction < 1.0:
        targets, _ = gather_boxes(train, det_cfg.classes, require=True)
        keep = sample_patients(train.images, _has_box(train, targets), run_cfg.label_fraction, run_cfg.seed)
        train = _subset(train, keep)
    return train, val


def train_detector(manifest: str | Path | Bundle, det_cfg: DetectorCfg, run_cfg: DetectTrainCfg,
                   out_dir: str | Path, *, model: MammoCLIP | None = None,
                   log_fn: Callable[[str], None] = print) -> DetectRun:
    """Train a detector and keep the epoch with the best mean validation AP@0.5.

    Args:
        manifest: The cohort (manifest path, folder or bundle) with ``train`` (and ``val``) rows.
        det_cfg: The detector.
        run_cfg: The protocol: source checkpoint, init, frozen or fine-tuned, label fraction, seed,
            optimisation.
        out_dir: Run directory: ``best/`` (detector checkpoint), ``metrics.jsonl``, ``args.yaml``,
            ``results.json`` (validation numbers of the selected epoch).
        model: An already-built Mammo-CLIP model to take the tower from (instead of ``run_cfg.checkpoint``);
            the detector trains a copy, so ``model`` is left unchanged.
        log_fn: Where progress lines go.

    Raises:
        DataError: no training rows, or a class without boxes.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = _bundle(manifest)
    train, val = select_training_data(bundle, det_cfg, run_cfg, log_fn)
    train_targets, stats = gather_boxes(train, det_cfg.classes, require=True)
    device = _device(run_cfg.device)
    torch.manual_seed(run_cfg.seed)
    det = build_detector(model if model is not None else run_cfg.checkpoint, det_cfg, run_cfg.init,
                         freeze_encoder=run_cfg.freeze_encoder).to(device)
    encoder_ids = {id(p) for p in det.encoder.parameters()}
    head_params = [p for p in det.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": run_cfg.lr}]
    if not run_cfg.freeze_encoder:
        groups.append({"params": [p for p in det.encoder.parameters() if p.requires_grad],
                       "lr": run_cfg.lr * run_cfg.encoder_lr_mult})
    optim = torch.optim.AdamW(groups, weight_decay=run_cfg.weight_decay)
    data = DetectionDataset(train, train_targets, det_cfg.image_size, run_cfg.augment, run_cfg.seed)
    info = provenance()
    (out / "args.yaml").write_text(yaml.safe_dump({"detector": det_cfg.to_dict(), "train": run_cfg.to_dict(),
                                                   "git_revision": info.get("git_revision")}, sort_keys=False),
                                   encoding="utf-8")
    log_fn(f"detect train: {len(train.images)} training images ({stats.kept} boxes {stats.per_class}, "
           f"{int((_has_box(train, train_targets) == 0).sum())} without findings), {len(val.images)} validation "
           f"images; encoder {'frozen' if run_cfg.freeze_encoder else 'fine-tuned'}, init {run_cfg.init}, "
           f"{count_parameters(det, trainable=True):,} trainable parameters")
    history: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    for epoch in range(run_cfg.epochs):
        data.set_epoch(epoch)
        gen = torch.Generator().manual_seed(run_cfg.seed * 1000 + epoch)
        loader = DataLoader(data, batch_size=run_cfg.batch_size, shuffle=True, generator=gen, collate_fn=collate,
                            num_workers=run_cfg.workers, drop_last=len(data) > run_cfg.batch_size)
        det.train()
        sums = {"loss": 0.0, "classification": 0.0, "bbox_regression": 0.0}
        steps = 0
        for batch in loader:
            targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
            losses = det(batch["image"].to(device), targets)
            loss = losses["classification"] + losses["bbox_regression"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"detect train: non-finite loss at epoch {epoch}, step {steps}: "
                                         f"{ {k: float(v) for k, v in losses.items()} }")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if run_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], run_cfg.grad_clip)
            optim.step()
            sums["loss"] += float(loss.detach())
            for k in ("classification", "bbox_regression"):
                sums[k] += float(losses[k].detach())
            steps += 1
        row: dict[str, Any] = {"epoch": epoch, **{f"train/{k}": v / max(steps, 1) for k, v in sums.items()}}
        if (epoch + 1) % run_cfg.eval_every == 0 or epoch + 1 == run_cfg.epochs:
            res = evaluate_detector(det, val, split=None, n_boot=0, out_dir=None, batch_size=run_cfg.batch_size,
                                    require_boxes=False)
            ap = [res["classes"][c]["all_images"]["ap50"]["value"] for c in det_cfg.classes]
            finite = [a for a in ap if np.isfinite(a)]
            score = float(np.mean(finite)) if finite else -1.0
            row["val/ap50"] = score
            if best is None or score >= best[0]:  # ties go to the later (longer-trained) epoch
                best = (score, epoch)
                det.save(out / "best", epoch=epoch, val_ap50=score)
        history.append(row)
        with (out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log_fn(f"epoch {epoch + 1}/{run_cfg.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                                     if k != "epoch"))
    write_results(out, {"task": "detect-train", "summary": {"best_epoch": best[1] if best else None,
                                                            "val_ap50": best[0] if best else None},
                        "history": history, "detector": det_cfg.to_dict(), "train": run_cfg.to_dict(),
                        "taps": det.describe_taps(), "boxes": stats.__dict__, "provenance": info,
                        "seconds": round(time.perf_counter() - start, 1)})
    return DetectRun(out, out / "best" if best else None, best[1] if best else None, history, det)


# --- inference ----------------------------------------------------------------------------------------


def _record(row: pd.Series) -> TransformRecord | None:
    if not set(TRANSFORM_COLUMNS) <= set(row.index) or pd.isna(row.get("crop_x0")):
        return None
    return TransformRecord.from_row(row)


@torch.inference_mode()
def predict_bundle(det: MammoDetector, bundle: Bundle, *, batch_size: int = 8, workers: int = 0) -> pd.DataFrame:
    """Run the detector on every image of ``bundle``; one row per detection.

    Columns: ``image_id, patient_id, split, class, label, score``, the box in processed-image pixels
    (``xmin, ymin, xmax, ymax``) and in original DICOM pixels (``orig_*``, through the manifest's
    transform record; empty without one).
    """
    det.eval()
    device = next(det.parameters()).device
    data = DetectionDataset(bundle, {}, det.cfg.image_size)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
    height, width = det.cfg.image_size
    rows: list[dict[str, Any]] = []
    images = bundle.images.reset_index(drop=True)
    for batch in loader:
        outputs = det(batch["image"].to(device))
        for index, (h0, w0), out in zip(batch["index"], batch["orig_size"], outputs, strict=True):
            row = images.iloc[index]
            boxes = scale_boxes(out["boxes"].cpu().numpy(), w0 / width, h0 / height)
            record = _record(row)
            orig = record.map_boxes(boxes, inverse=True) if record is not None else np.full_like(boxes, np.nan)
            for b, o, s, lab in zip(boxes, orig, out["scores"].cpu().numpy(), out["labels"].cpu().numpy(), strict=True):
                rows.append({"image_id": str(row["image_id"]), "patient_id": str(row["patient_id"]),
                             "split": row.get("split"), "class": det.cfg.classes[int(lab)], "label": int(lab),
                             "score": float(s), "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3],
                             "orig_xmin": o[0], "orig_ymin": o[1], "orig_xmax": o[2], "orig_ymax": o[3]})
    columns = ["image_id", "patient_id", "split", "class", "label", "score", "xmin", "ymin", "xmax", "ymax",
               "orig_xmin", "orig_ymin", "orig_xmax", "orig_ymax"]
    return pd.DataFrame(rows, columns=columns)


def _per_class(preds: pd.DataFrame, targets: dict[str, tuple[np.ndarray, np.ndarray]], ids: list[str], k: int,
               name: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    mine = preds[preds["class"] == name]
    grouped = {iid: g for iid, g in mine.groupby("image_id")}
    p, g = [], []
    for iid in ids:
        d = grouped.get(iid)
        p.append((np.zeros((0, 4)), np.zeros(0)) if d is None else
                 (d[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=np.float64), d["score"].to_numpy(dtype=np.float64)))
        boxes, labels = targets[iid]
        g.append(boxes[labels == k])
    return p, g


def detection_results(preds: pd.DataFrame, bundle: Bundle, classes: list[str],
                      targets: dict[str, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000, seed: int = 0
                      ) -> tuple[dict[str, Any], dict[str, ClassMatches]]:
    """Metrics of every class under both protocols, with patient-level bootstrap CIs."""
    ids = bundle.images["image_id"].astype(str).tolist()
    patients = bundle.images["patient_id"].astype(str).to_numpy()
    out: dict[str, Any] = {}
    matches: dict[str, ClassMatches] = {}
    for k, name in enumerate(classes):
        p, g = _per_class(preds, targets, ids, k, name)
        m = match_class(p, g)
        matches[name] = m
        positive = np.array([len(b) > 0 for b in g])
        entry: dict[str, Any] = {"n_images": len(ids), "n_positive_images": int(positive.sum()),
                                 "n_boxes": int(sum(len(b) for b in g))}
        for protocol, idx in (("all_images", np.arange(len(ids))), ("positives_only", np.flatnonzero(positive))):
            est = bootstrap_class_metrics(m.subset(idx), patients[idx], n_boot, seed)
            entry[protocol] = {key: e.to_dict() for key, e in est.items()}
        out[name] = entry
    return out, matches


def evaluate_detector(detector: MammoDetector | str | Path, manifest: str | Path | Bundle, *,
                      split: str | None = "test", out_dir: str | Path | None = None, n_boot: int = 1000,
                      batch_size: int = 8, workers: int = 0, overlays: int = DEFAULT_OVERLAYS,
                      seed: int = 0, require_boxes: bool = True) -> dict[str, Any]:
    """Evaluate a detector on one split: VOC AP@0.5, COCO AP, FROC, under both protocols.

    ``all_images`` counts every image of the split, normal ones included (false positives on normal
    mammograms cost); ``positives_only`` keeps only images with a box of the class (the paper's test set).

    Args:
        detector: A detector or its checkpoint folder.
        manifest: The cohort.
        split: The split to evaluate (None: every row).
        out_dir: Write ``results.json``, ``predictions.csv``, ``images.csv``, ``froc.png``, ``pr.png``,
            ``overlays/`` and ``index.html`` (the detection section as a page) there (None: nothing is written).
        n_boot: Patient-level bootstrap replicates (0: no intervals).
        overlays: How many images to draw.
        require_boxes: Fail when a class has no box in the split (its AP would be undefined); the
            per-epoch validation of a small training run passes False.

    Raises:
        DataError: an empty split, or a class without boxes (``require_boxes``).
    """
    from mammoclip.detect.model import load_detector

    start = time.perf_counter()
    det = load_detector(detector) if isinstance(detector, (str, Path)) else detector
    bundle = _bundle(manifest)
    part = bundle.split(split) if split is not None else bundle
    if len(part.images) == 0:
        raise DataError(f"{bundle.root / 'manifest.csv'}: no rows with split == {split!r} to evaluate")
    targets, stats = gather_boxes(part, det.cfg.classes, require=require_boxes)
    preds = predict_bundle(det, part, batch_size=batch_size, workers=workers)
    classes, matches = detection_results(preds, part, det.cfg.classes, targets, n_boot=n_boot, seed=seed)
    summary: dict[str, Any] = {}
    for name, entry in classes.items():
        for protocol in PROTOCOLS:
            for key in ("ap50", "coco_ap", "froc_mean"):
                summary[f"{name}/{protocol}/{key}"] = entry[protocol][key]["value"]
    results: dict[str, Any] = {"task": "detect-eval", "split": split, "summary": summary, "classes": classes,
               "detector": det.cfg.to_dict(), "taps": det.describe_taps(), "boxes": stats.__dict__,
               "n_boot": n_boot, "seed": seed, "provenance": provenance(),
               "seconds": round(time.perf_counter() - start, 1)}
    if out_dir is not None:
        from mammoclip.detect.outputs import draw_overlays, plot_froc, plot_pr

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        preds.to_csv(out / PREDICTIONS_FILE, index=False)
        image_table(part, targets, det.cfg.classes).to_csv(out / IMAGES_FILE, index=False)
        results["plots"] = [str(plot_froc(matches, out / "froc.png").name), str(plot_pr(matches, out / "pr.png").name)]
        results["overlays"] = [str(p.relative_to(out)) for p in
                               draw_overlays(part, preds, targets, det.cfg.classes, out / "overlays", overlays)]
        write_results(out, results)
        from mammoclip.evaluate.sections import detection_section_html, write_section_page

        write_section_page(out, f"mammoclip detect eval: {split or 'all rows'}",
                           detection_section_html(out, max_overlays=overlays))
    return results


def image_table(bundle: Bundle, targets: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> pd.DataFrame:
    """The evaluated images (normal ones included) with their number of target boxes per class."""
    rows = []
    for _, r in bundle.images.iterrows():
        boxes, labels = targets.get(str(r["image_id"]), (np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
        rows.append({"image_id": str(r["image_id"]), "patient_id": str(r["patient_id"]), "split": r.get("split"),
                     **{f"n_{c}": int((labels == k).sum()) for k, c in enumerate(classes)}})
    return pd.DataFrame(rows)


def predict(detector: MammoDetector | str | Path, manifest: str | Path | Bundle, *, out_dir: str | Path | None = None,
            split: str | None = None, batch_size: int = 8, workers: int = 0, overlays: int = DEFAULT_OVERLAYS
            ) -> pd.DataFrame:
    """Detections on every image of a manifest (or one split), with boxes in processed and original pixels.

    Writes ``predictions.csv`` (and ``overlays/`` of the highest-scoring images) into ``out_dir``.
    """
    from mammoclip.detect.model import load_detector

    det = load_detector(detector) if isinstance(detector, (str, Path)) else detector
    bundle = _bundle(manifest)
    part = bundle.split(split) if split is not None else bundle
    if len(part.images) == 0:
        raise DataError(f"{bundle.root / 'manifest.csv'}: no images to run the detector on")
    preds = predict_bundle(det, part, batch_size=batch_size, workers=workers)
    if out_dir is not None:
        from mammoclip.detect.outputs import draw_overlays

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        preds.to_csv(out / PREDICTIONS_FILE, index=False)
        targets, _ = gather_boxes(part, det.cfg.classes, require=False)
        draw_overlays(part, preds, targets, det.cfg.classes, out / "overlays", overlays)
    return preds
