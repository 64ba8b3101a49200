"""Typed run configuration: YAML preset as defaults, ``--set key=value`` overrides, resolved ``args.yaml``.

One path for every run (docs/architecture.md, design rule 7): ``load_config(preset, overrides)`` -> :class:`RunConfig`
(validated in ``__post_init__``) -> ``run_dir/args.yaml`` (with the git revision). Keys are dotted
paths into the sections, e.g. ``--set optim.lr=1e-4 --set loop.batch_size=8``; values are parsed as
YAML (``true``, ``1e-4``, ``[256, 160]``).
"""

from __future__ import annotations

import dataclasses
import subprocess
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mammoclip.constants import I2I_WEIGHT, T2T_WEIGHT
from mammoclip.errors import ConfigError

#: Numeric precisions the loop supports (fp16 uses a GradScaler).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


@dataclass
class ModelSection:
    """Which model to train."""

    #: Registry name (``mammoclip.models.list_models()``) or a checkpoint folder.
    name: str = "mammoclip-lite"
    #: Load the pretrained tower weights the registry names (False: random init).
    pretrained: bool = True
    #: Recompute activations in the backward pass (less memory, ~30% slower).
    grad_checkpointing: bool = False
    #: Freeze the text tower (LiT-style: only the image side and the projections learn; much cheaper).
    lock_text: bool = False
    #: Freeze the image tower (and its BatchNorm statistics).
    lock_image: bool = False
    #: Extra keyword overrides for ``create_model`` (e.g. ``{"embed_dim": 256}``).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Training data: image-text and image-label manifests, mixed in one run."""

    #: Manifests (file or folder) whose rows carry a ``report_id`` (two views, two captions).
    image_text: list[str] = field(default_factory=list)
    #: Manifests whose binary labels become text through label->text templates (docs/original.md §2.3).
    image_label: list[str] = field(default_factory=list)
    #: (height, width) fed to the model; null = the model's preprocessing size.
    image_size: tuple[int, int] | None = None
    #: Split names used for training and validation.
    train_split: str = "train"
    val_split: str = "val"
    #: Image augmentation preset of ``mammoclip.data.transforms`` ("paper", "light", "none").
    augment: str = "paper"
    #: Caption augmenter spec (``mammoclip.text.augment.build_augmenter``); "" = off. The augmented
    #: caption replaces the original with probability 0.5 (docs/original.md §2.2).
    text_augment: str = "shuffle,lexicon:p=0.5"
    #: Pair each breast with its own sentences of the report (False: the whole report, as the
    #: original does; see :class:`mammoclip.data.datasets.ImageTextDataset`).
    per_breast_captions: bool = True

    def __post_init__(self) -> None:
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))


@dataclass
class LossSection:
    """The objective (``mammoclip.losses.create_loss``)."""

    #: "mammoclip" (docs/original.md §4) or "clip".
    name: str = "mammoclip"
    #: Keyword arguments of the loss (weights, label smoothing).
    kwargs: dict[str, Any] = field(
        default_factory=lambda: {"i2i_weight": I2I_WEIGHT, "t2t_weight": T2T_WEIGHT, "label_smoothing": 0.0}
    )


@dataclass
class OptimConfig:
    """AdamW + schedule (docs/original.md §5: lr 5e-5, wd 1e-4, 1 warm-up epoch, cosine)."""

    lr: float = 5e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: A name from ``mammoclip.train.optim.list_schedules()``.
    schedule: str = "cosine"
    #: Warm-up length in epochs (may be fractional).
    warmup_epochs: float = 1.0
    #: Final learning rate as a fraction of ``lr``.
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError(f"optim: lr must be > 0, weight_decay and warmup_epochs >= 0 (got {self})")


@dataclass
class LoopConfig:
    """How the loop runs (task-agnostic)."""

    epochs: int = 15
    #: Stop after this many optimizer steps (null: run all epochs). The schedule still spans ``epochs``.
    max_steps: int | None = None
    #: Items per optimizer step per rank: the contrastive batch.
    batch_size: int = 4
    #: Gradient caching: rows per forward with a graph (null: the whole batch at once).
    micro_batch: int | None = None
    #: "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler).
    precision: str = "fp32"
    #: Clip the global gradient norm to this value (null: no clipping).
    grad_clip: float | None = None
    #: Save a checkpoint every N optimizer steps (0: only at epoch ends).
    checkpoint_every: int = 0
    #: Step checkpoints kept (the best model is kept separately).
    keep_last: int = 2
    #: Metrics line every N steps.
    log_every: int = 10
    #: DataLoader worker processes.
    workers: int = 2
    #: Base seed (data order, augmentations, init).
    seed: int = 10
    #: torch deterministic algorithms (bitwise-reproducible CPU runs; slower).
    deterministic: bool = False
    #: fp16 only: stop after this many consecutive steps skipped by the GradScaler.
    max_skipped_steps: int = 10
    #: "auto" (CUDA when available), "cpu" or "cuda".
    device: str = "auto"
    #: DDP option for models with parameters unused in the loss (the HF text towers keep an unused
    #: pooler, as the original's BERT did); False is faster when every parameter gets a gradient.
    find_unused_parameters: bool = True
    #: Metric that selects the best checkpoint, and whether lower or higher is better.
    best_metric: str = "val/loss"
    best_mode: str = "min"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"loop.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("loop.batch_size and loop.epochs must be >= 1")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise ConfigError(f"loop.micro_batch must be in [1, batch_size={self.batch_size}], got {self.micro_batch}")
        if self.best_mode not in ("min", "max"):
            raise ConfigError(f"loop.best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.keep_last < 1:
            raise ConfigError("loop.keep_last must be >= 1")


@dataclass
class EvalSection:
    """Validation extras run at each epoch end."""

    #: Zero-shot tasks (``mammoclip.text.prompts.list_zero_shot_tasks()``) scored on the val split.
    zero_shot: list[str] = field(default_factory=list)
    #: Prompt style for zero-shot ("paper" or "ensemble").
    prompt_style: str = "paper"


@dataclass
class RunConfig:
    """A complete pre-training run."""

    task: str = "pretrain"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    #: Folder holding runs; the run goes to ``out_dir/run_name``.
    out_dir: str = "runs"
    #: Run folder name (null: ``<task>-<model>``).
    run_name: str | None = None

    def __post_init__(self) -> None:
        if not self.data.image_text and not self.data.image_label:
            raise ConfigError("data: give at least one manifest in data.image_text or data.image_label")

    @property
    def run_dir(self) -> Path:
        name = self.run_name or f"{self.task}-{Path(self.model.name).name}"
        return Path(self.out_dir) / name

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclass sections."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(hint, v, f"{where}{k}.")
        else:
            kwargs[k] = _coerce(hint, v, f"{where}{k}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Numbers written as YAML strings (``1e-4`` is a string in YAML 1.1) -> the field's type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(hint) or (hint,)
    for kind in (int, float):
        if kind in options:
            try:
                return kind(value)
            except ValueError:
                if kind is float:
                    raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    return value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["optim.lr=1e-4", "loop.epochs=2"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **sections: Any) -> RunConfig:
    """Resolve a run config: dataclass defaults <- YAML preset <- ``sections`` <- ``--set`` overrides.

    Args:
        path: A YAML preset (e.g. ``configs/pretrain-lite-cpu.yaml``) or None.
        overrides: ``key=value`` strings with dotted keys.
        sections: Dict overrides from Python (e.g. ``data={"image_text": ["cohort/"]}``).

    Example:
        >>> cfg = load_config("configs/pretrain-lite-cpu.yaml", ["loop.epochs=1"])  # doctest: +SKIP
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        tree = loaded
    tree = _merge(tree, {k: v for k, v in sections.items()})
    tree = _merge(tree, parse_overrides(overrides))
    return _build(RunConfig, tree, "")


def git_revision() -> str | None:
    """The git commit of the source tree (with ``-dirty`` if modified), or None outside git."""
    root = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_config(run_dir: Path, config: dict[str, Any]) -> Path:
    """Write the resolved config plus the git revision to ``run_dir/args.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "args.yaml"
    doc = {"git_revision": git_revision(), **config}
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(out)
    return out
