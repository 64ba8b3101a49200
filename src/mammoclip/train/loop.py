"""The one training loop: any :class:`~mammoclip.train.tasks.Task`, any scale, resumable.

``fit(task, train_data, ...)`` runs epochs of optimizer steps with

* AMP (bf16 autocast, or fp16 autocast + ``GradScaler``), gradient clipping, gradient caching for
  contrastive tasks (``loop.micro_batch``, see :mod:`mammoclip.train.gradcache`);
* DDP when the process group is initialised (one code path for ``python`` and ``torchrun``);
* a non-finite loss check that stops the run naming the step (fp32/bf16) before the optimizer
  touches the weights; under fp16 the scaler skips such steps, and the run stops after
  ``loop.max_skipped_steps`` consecutive skips;
* checkpoints every ``loop.checkpoint_every`` steps and at each epoch end, written atomically (a
  temporary folder renamed into place), the last ``loop.keep_last`` kept, plus ``best/`` (by
  ``loop.best_metric``); ``resume=True`` restores model, optimizer, scheduler, scaler, RNG and the
  position in the data order (:class:`~mammoclip.train.distributed.ResumableSampler`);
* ``best/`` kept consistent with the recorded score: the state names the step of the best epoch
  (``best_step``), and a resume rewrites ``best/`` from that step's checkpoint when a kill came
  between the two writes; temporary folders left by a killed write are removed on start;
* a progress bar (loss, images/s, ETA; bounded lines when stderr is a log), ``metrics.jsonl``
  (+ TensorBoard when installed); rank 0 alone writes.

Run folder::

    run_dir/args.yaml  metrics.jsonl  checkpoints/step-00000012/{training_state.pt, meta.json, model files}
    run_dir/best/{meta.json, model files}   (export of the best checkpoint)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mammoclip.errors import CheckpointError
from mammoclip.progress import progress_bar
from mammoclip.train import distributed as D
from mammoclip.train.config import LoopConfig, OptimConfig, write_run_config
from mammoclip.train.gradcache import gradcache_backward
from mammoclip.train.optim import build_optimizer, build_scheduler
from mammoclip.train.tasks import Task, unwrap

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
#: Folders :func:`_atomic_dir` leaves behind when killed mid-write (``.tmp-<name>-<pid>`` being
#: written, ``.old-<name>-<pid>`` being replaced); only these names are ever removed on start.
STALE_TEMP = re.compile(r"\.(?:tmp|old)-(?:best|step-\d{8})-\d+")

log = logging.getLogger(__name__)

#: Collate function type: list of items -> batch dict.
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
#: Extra validation: model -> {metric name: value} (e.g. zero-shot AUC), run on rank 0's view.
Evaluator = Callable[[nn.Module], Mapping[str, float]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    run_dir: Path
    #: Optimizer steps done in total.
    steps: int
    #: Folder of the last checkpoint written (None if none).
    last_checkpoint: Path | None
    #: ``run_dir/best`` when a best model was selected.
    best: Path | None
    #: Per-epoch validation metrics.
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------- checkpoints ---


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()]
    return sorted(done, key=lambda p: json.loads((p / META_FILE).read_text())["global_step"])


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder through ``write(tmp)`` then rename it to ``final`` (never half-written)."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for f in (p for p in tmp.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    trash = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        final.rename(trash)
    tmp.rename(final)
    shutil.rmtree(trash, ignore_errors=True)
    return final


def remove_stale_temp(run_dir: str | Path) -> list[Path]:
    """Remove the temporary folders a killed atomic write left in ``run_dir`` (and its checkpoints).

    Only names matching :data:`STALE_TEMP` directly inside ``run_dir`` or ``run_dir/checkpoints`` are
    touched, so nothing a user put in the run folder is deleted. Called by rank 0 on start, before
    anything is written: two processes training into one run folder at once is not supported.

    Returns:
        The folders removed (logged as one warning line).
    """
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if STALE_TEMP.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    if removed:
        names = ", ".join(str(p.relative_to(run_dir)) for p in removed)
        log.warning("%s: removed %d stale temporary folder(s) of an interrupted write: %s", run_dir,
                    len(removed), names)
    return removed


def _rng_state() -> dict[str, Any]:
    """RNG states as plain lists (picklable by ``all_gather_object`` and loadable with ``weights_only``)."""
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in cuda],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """Read ``training_state.pt`` safely (``weights_only``: no pickled code runs)."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: no {STATE_FILE} (not a training checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: cannot be read ({err})") from err


# ---------------------------------------------------------------------------------------- loop ---


class _Logger:
    """metrics.jsonl (+ TensorBoard when installed), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _loader(
    data: Dataset, sampler: D.ResumableSampler, batch_size: int, collate: Collate | None, cfg: LoopConfig,
    device: torch.device, epoch: int,
) -> DataLoader:
    # Worker seeds come from this generator, not from the global RNG: creating the loader must not
    # change the RNG stream the model consumes (dropout), or a resumed run would diverge.
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return DataLoader(
        data, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.workers,
        drop_last=True, pin_memory=device.type == "cuda", generator=g,
        persistent_workers=False, prefetch_factor=4 if cfg.workers > 0 else None,
    )


def _set_data_epoch(data: Dataset, epoch: int) -> None:
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def fit(
    task: Task,
    train_data: Dataset,
    *,
    loop: LoopConfig,
    optim: OptimConfig,
    run_dir: str | Path,
    collate: Collate | None = None,
    val_data: Dataset | None = None,
    evaluator: Evaluator | None = None,
    resume: bool | str | Path = False,
    config: Mapping[str, Any] | None = None,
    dist: D.DistInfo | None = None,
) -> FitResult:
    """Train ``task.model`` on ``train_data``.

    Args:
        task: What to optimise (see :mod:`mammoclip.train.tasks`).
        train_data: Map-style dataset; ``set_epoch(epoch)`` is called when it exists (per-item seeds).
        loop: Loop settings (batch size per rank, epochs, precision, checkpoints, ...).
        optim: Optimizer and schedule settings.
        run_dir: Output folder (created).
        collate: Batches items (e.g. with dynamic text padding).
        val_data: Validation dataset: mean loss terms at every epoch end (``val/<term>``).
        evaluator: Extra metrics at every epoch end (rank 0 computes, all ranks wait).
        resume: True: continue from the latest checkpoint of ``run_dir`` (fresh start if none);
            a path: continue from that checkpoint folder.
        config: Resolved run config written to ``args.yaml`` with the git revision.
        dist: Process placement (default: ``init_distributed(loop.device)``).

    Returns:
        A :class:`FitResult`.
    """
    dist = dist or D.init_distributed(loop.device)
    device = dist.device
    run_dir = Path(run_dir)
    primary = dist.is_primary
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(run_dir)
        if config is not None:
            write_run_config(run_dir, dict(config))
    if loop.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    raw: nn.Module = unwrap(task.model).to(device)
    task.model = raw
    if dist.distributed:
        task.model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=loop.find_unused_parameters,
        )

    sampler = D.ResumableSampler(len(train_data), shuffle=True, seed=loop.seed, rank=dist.rank,
                                 world_size=dist.world_size)
    steps_per_epoch = sampler.per_rank // loop.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set has {len(train_data)} items: fewer than batch_size={loop.batch_size} "
            f"per rank x {dist.world_size} rank(s)"
        )
    total_steps = loop.epochs * steps_per_epoch
    optimizer = build_optimizer(raw, optim.lr, optim.weight_decay, optim.betas, optim.eps)
    scheduler = build_scheduler(optimizer, optim.schedule, round(optim.warmup_epochs * steps_per_epoch),
                                total_steps, optim.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type) if loop.precision == "fp16" else None
    autocast = _autocast(device, loop.precision)

    state: dict[str, Any] = {"epoch": 0, "batch": 0, "global_step": 0, "best": None, "best_step": None,
                             "history": [], "skipped": 0}
    ckpt = _resume_from(run_dir, resume)
    if ckpt is not None:
        saved = load_training_state(ckpt)
        raw.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"][dist.rank] if dist.rank < len(saved["rng"]) else saved["rng"][0])
        for k in ("epoch", "batch", "global_step", "best", "history"):
            state[k] = saved[k]
        state["best_step"] = (saved["best_step"] if "best_step" in saved
                              else _derive_best_step(saved, loop, steps_per_epoch))
        if primary:
            _repair_best(run_dir, state, loop)
        D.barrier()
    logger = _Logger(run_dir, primary)
    last_ckpt: Path | None = ckpt

    def save(epoch_end: bool) -> Path:
        rngs = _gather_objects(_rng_state(), dist)
        payload = {
            "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
            "epoch": state["epoch"], "batch": state["batch"], "global_step": state["global_step"],
            "best": state["best"], "best_step": state["best_step"], "history": state["history"],
        }
        meta = {"global_step": state["global_step"], "epoch": state["epoch"], "batch": state["batch"],
                "epoch_end": epoch_end, "task": task.name, "time": time.time()}
        final = run_dir / CHECKPOINT_DIR / f"step-{state['global_step']:08d}"
        if primary:
            final.parent.mkdir(parents=True, exist_ok=True)

            def write(tmp: Path) -> None:
                torch.save(payload, tmp / STATE_FILE)
                task.export(raw, tmp)
                (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

            _atomic_dir(final, write)
            for old in list_checkpoints(run_dir)[: -loop.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        D.barrier()
        return final

    try:
        while state["epoch"] < loop.epochs and not _done(state, loop):
            epoch = state["epoch"]
            sampler.set_position(epoch, state["batch"] * loop.batch_size)
            _set_data_epoch(train_data, epoch)
            raw.train()
            loader = _loader(train_data, sampler, loop.batch_size, collate, loop, device, epoch)
            bar = _bar(primary, steps_per_epoch, state["batch"], f"epoch {epoch + 1}/{loop.epochs}")
            t0, seen = time.perf_counter(), 0
            for batch in loader:
                step = state["global_step"] + 1
                losses, n = _train_step(task, batch, device, optimizer, scaler, autocast, loop, raw, step,
                                        epoch, state, last_ckpt)
                if state["skipped"]:
                    # fp16: the scaler skipped this optimizer step (inf/NaN gradients; routine for the
                    # first steps while it finds its scale). The schedule still advances, so it stays
                    # a function of the global step (and of nothing else on resume); torch's "scheduler
                    # before optimizer" warning describes exactly this and is not a user error.
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                        scheduler.step()
                else:
                    scheduler.step()
                state["global_step"] = step
                state["batch"] += 1
                seen += n * dist.world_size
                ips = seen / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", img_s=f"{ips:.1f}")
                if step % loop.log_every == 0 or step == 1:
                    logger.log(step, {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "images_per_s": ips,
                                      **{f"train/{k}": v for k, v in losses.items()}})
                at_epoch_end = state["batch"] >= steps_per_epoch
                if loop.checkpoint_every and step % loop.checkpoint_every == 0 and not at_epoch_end:
                    last_ckpt = save(epoch_end=False)
                if _done(state, loop):
                    break
            if bar is not None:
                bar.close()
            if state["batch"] < steps_per_epoch:  # stopped by max_steps inside the epoch
                last_ckpt = save(epoch_end=False)
                break
            metrics = _validate(task, val_data, evaluator, collate, loop, device, autocast, dist, epoch)
            state["epoch"] += 1
            state["batch"] = 0
            best_dir = None
            if metrics:
                metrics = {"epoch": epoch + 1, **metrics}
                state["history"].append(metrics)
                logger.log(state["global_step"], metrics)
                value = metrics.get(loop.best_metric)
                if value is not None and _better(value, state["best"], loop.best_mode):
                    state["best"] = value
                    state["best_step"] = state["global_step"]
                    best_dir = run_dir / BEST_DIR
            # The checkpoint records the new best (score and step) first; best/ follows. A kill
            # between the two is repaired on resume by _repair_best from this very checkpoint.
            last_ckpt = save(epoch_end=True)
            if best_dir is not None and primary:
                _export_best(task, raw, best_dir, state, loop)
            D.barrier()
    finally:
        logger.close()
    best = run_dir / BEST_DIR
    return FitResult(run_dir, state["global_step"], last_ckpt, best if best.is_dir() else None, state["history"])


def _done(state: Mapping[str, Any], loop: LoopConfig) -> bool:
    return loop.max_steps is not None and state["global_step"] >= loop.max_steps


def _resume_from(run_dir: Path, resume: bool | str | Path) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE})")
    return path


def _gather_objects(obj: Any, dist: D.DistInfo) -> list[Any]:
    if not dist.distributed:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _bar(primary: bool, total: int, initial: int, desc: str) -> Any:
    if not primary:
        return None
    # A bar on a terminal; bounded progress lines (rate, ETA) when stderr goes to a log.
    return progress_bar(total, desc, "step", initial=initial)


def _train_step(
    task: Task, batch: Mapping[str, Any], device: torch.device, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, autocast: Callable[[], contextlib.AbstractContextManager],
    loop: LoopConfig, raw: nn.Module, step: int, epoch: int, state: dict[str, Any], last_ckpt: Path | None,
) -> tuple[dict[str, float], int]:
    """One optimizer step; returns the (rank-averaged) loss terms and the images it consumed."""
    optimizer.zero_grad(set_to_none=True)
    batch = task.prepare(batch, device)
    n = task.num_items(batch)
    scale = scaler.scale if scaler is not None else (lambda x: x)
    if loop.micro_batch is not None and task.supports_gradcache:
        losses = gradcache_backward(task.model, batch, loop.micro_batch, task.outputs, task.loss_from_outputs,
                                    autocast=autocast, scale=scale)
        finite = _all_finite(losses["loss"])
    else:
        with autocast():
            losses = task(batch)
        finite = _all_finite(losses["loss"])
        if finite or scaler is not None:
            scale(losses["loss"]).backward()
    if not finite and scaler is None:
        where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint written yet"
        raise NonFiniteLossError(
            f"non-finite loss ({float(losses['loss'].detach())}) at step {step} (epoch {epoch + 1}, batch "
            f"{state['batch'] + 1}); the weights were not updated; {where}. Lower optim.lr, set "
            "loop.grad_clip, or use loop.precision=bf16."
        )
    if scaler is not None:
        scaler.unscale_(optimizer)
    if loop.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), loop.grad_clip)
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
        state["skipped"] = state["skipped"] + 1 if skipped else 0
        if state["skipped"] >= loop.max_skipped_steps:
            raise NonFiniteLossError(
                f"fp16: {state['skipped']} consecutive steps skipped for inf/NaN gradients, up to step {step} "
                f"(epoch {epoch + 1}); last good checkpoint: {last_ckpt}. Use loop.precision=bf16 or lower optim.lr."
            )
    else:
        optimizer.step()
    return {k: float(D.all_reduce_mean(v.float())) for k, v in losses.items()}, n


def _all_finite(loss: torch.Tensor) -> bool:
    flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    return float(D.all_reduce_mean(flag)) == 0.0


@torch.no_grad()
def _validate(
    task: Task, val_data: Dataset | None, evaluator: Evaluator | None, collate: Collate | None, loop: LoopConfig,
    device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager], dist: D.DistInfo, epoch: int,
) -> dict[str, float]:
    """Mean loss terms over the validation set (same batch size as training) + evaluator metrics."""
    raw = unwrap(task.model)
    raw.eval()
    metrics: dict[str, float] = {}
    try:
        if val_data is not None and len(val_data) >= 2 * dist.world_size:
            sampler = D.ResumableSampler(len(val_data), shuffle=False, seed=loop.seed, rank=dist.rank,
                                         world_size=dist.world_size)
            _set_data_epoch(val_data, 0)
            bs = min(loop.batch_size, sampler.per_rank)
            totals: dict[str, float] = {}
            count = 0
            for batch in _loader(val_data, sampler, bs, collate, loop, device, 0):
                batch = task.prepare(batch, device)
                with autocast():
                    losses = task(batch)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(D.all_reduce_mean(v.float()))
                count += 1
            metrics.update({f"val/{k}": v / max(count, 1) for k, v in totals.items()})
        if evaluator is not None:
            extra = dict(evaluator(raw)) if dist.is_primary else {}
            extra = _gather_objects(extra, dist)[0]
            metrics.update(extra)
    finally:
        raw.train()
    return metrics


def _export_best(task: Task, raw: nn.Module, best_dir: Path, state: Mapping[str, Any], loop: LoopConfig) -> None:
    meta = {"global_step": state["global_step"], "epoch": state["epoch"], loop.best_metric: state["best"]}

    def write(tmp: Path) -> None:
        task.export(raw, tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    _atomic_dir(best_dir, write)


def _best_dir_step(best_dir: Path) -> int | None:
    """The ``global_step`` that ``best/meta.json`` records (None when missing or unreadable)."""
    try:
        return int(json.loads((best_dir / META_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _derive_best_step(saved: Mapping[str, Any], loop: LoopConfig, steps_per_epoch: int) -> int | None:
    """``best_step`` of a state written before it was recorded: the last epoch whose metric is the best."""
    if saved.get("best") is None:
        return None
    epochs = [h["epoch"] for h in saved.get("history", []) if h.get(loop.best_metric) == saved["best"]]
    return int(epochs[-1]) * steps_per_epoch if epochs else None


def _repair_best(run_dir: Path, state: Mapping[str, Any], loop: LoopConfig) -> None:
    """Make ``best/`` the export of ``state["best_step"]`` again after a kill between the two writes.

    The epoch-end checkpoint holds the same model files that ``best/`` would (both come from
    ``task.export`` on the same weights), so they are copied from it. When that checkpoint is gone
    (pruned by ``keep_last`` after an explicit ``--resume`` of an older one) ``best/`` is left as it
    is, with a warning.
    """
    step = state["best_step"]
    best_dir = run_dir / BEST_DIR
    have = _best_dir_step(best_dir)
    if step is None or have == step:
        return
    source = run_dir / CHECKPOINT_DIR / f"step-{step:08d}"
    found = "missing" if have is None else f"from step {have}"
    if not (source / META_FILE).is_file():
        log.warning("%s: best/ is %s but the recorded best is step %d, whose checkpoint is gone; left as is",
                    run_dir, found, step)
        return
    meta = {"global_step": step, "epoch": json.loads((source / META_FILE).read_text())["epoch"],
            loop.best_metric: state["best"]}

    def write(tmp: Path) -> None:
        for f in source.iterdir():
            if f.name not in (STATE_FILE, META_FILE):
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    _atomic_dir(best_dir, write)
    log.warning("%s: best/ was %s; rewritten from %s (the recorded best, %s=%s)", run_dir, found,
                source.relative_to(run_dir), loop.best_metric, state["best"])
