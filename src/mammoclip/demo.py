"""The end-to-end demo behind ``make demo`` / ``mammoclip demo``.

synthesize a cohort -> write DICOMs -> preprocess -> pre-train ``mammoclip-lite`` -> zero-shot and
linear probes at label fractions against random-init and ImageNet-init baselines -> mass detection
(RetinaNet on the frozen tower, pre-trained vs ImageNet init) -> Mammo-FActOR weak localization against
its baselines -> ``index.html``.

This is an application (layer 4): it calls only the public functions that the CLI commands call,
so the demo exercises exactly what users run. Every number in the report comes from this run.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import mammoclip
from mammoclip.errors import ConfigError

#: Binary tasks the demo evaluates (manifest label columns with zero-shot prompt sets); also the
#: attributes of the FActOR stage.
DEMO_TASKS: tuple[str, ...] = ("mass", "calcification")
#: The class the detection stage localizes (the synthetic masses are 12-31 px at 256x160, a size a
#: small RetinaNet learns on CPU in minutes; calcifications are a few pixels: docs/detection.md §7).
DETECT_CLASS = "mass"
#: Image-tower initialisations the detection stage may compare (``DemoConfig.detect_inits``).
DETECT_INITS: tuple[str, ...] = ("pretrained", "imagenet", "random")
#: Baselines FActOR is scored against (docs/attribution.md §4); the verdict is against ``breast_prior``.
FACTOR_BASELINES: tuple[str, ...] = ("breast_prior", "top_channels", "gradcam")


@dataclass
class DemoConfig:
    """Settings of one demo run. The defaults finish in under 15 minutes on 2 quiet CPU cores."""

    #: Output folder (cohort, preprocessed images, runs, ``index.html``).
    out: Path = Path("demo-output")
    #: Synthetic patients (4 images each).
    patients: int = 300
    #: Size of the generated DICOMs, (H, W): small "detector" images keep the demo fast.
    dicom_size: tuple[int, int] = (640, 384)
    #: Model input size (H, W) the DICOMs are preprocessed to.
    image_size: tuple[int, int] = (256, 160)
    #: Pre-training epochs and batch size.
    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-4
    #: Freeze the text tower during pre-training (only the image side and projections learn).
    lock_text: bool = True
    #: Label fractions and seeds of the linear probes.
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: Image-tower initialisations compared by the probes.
    inits: tuple[str, ...] = ("pretrained", "imagenet", "random")
    #: Worker processes for synthesis and preprocessing.
    workers: int = 2
    seed: int = 0
    #: Bootstrap replicates for the confidence intervals.
    n_boot: int = 500
    #: Progress bars (None: only when stderr is a terminal).
    progress: bool | None = None
    #: Run the detection stage (a mass RetinaNet on the frozen tower, one per init in ``detect_inits``).
    detect: bool = True
    #: Image-tower initialisations of the detectors (the pre-trained checkpoint vs ImageNet weights).
    detect_inits: tuple[str, ...] = ("pretrained", "imagenet")
    #: Detector training epochs (validation AP@0.5 picks the best) and the share of the training
    #: patients it sees (drawn stratified on having a mass): what fits the demo's CPU budget.
    detect_epochs: int = 3
    detect_fraction: float = 0.25
    #: Run the attribution stage (Mammo-FActOR mapper on the pre-trained model, scored with baselines).
    factor: bool = True
    #: Mapper epochs (None: ``FactorConfig``'s default, so improvements to the method's defaults flow in).
    factor_epochs: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.patients < 8:
            raise ConfigError(f"the demo needs at least 8 patients, got {self.patients}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must lie in (0, 1], got {self.fractions}")
        self.detect_inits = tuple(self.detect_inits)
        unknown = [i for i in self.detect_inits if i not in DETECT_INITS]
        if unknown or (self.detect and not self.detect_inits):
            raise ConfigError(f"detect_inits must be a non-empty subset of {list(DETECT_INITS)}, got "
                              f"{list(self.detect_inits)}")
        if self.detect_epochs < 1 or not 0 < self.detect_fraction <= 1:
            raise ConfigError(f"detect_epochs must be >= 1 and detect_fraction in (0, 1], got {self.detect_epochs}, "
                              f"{self.detect_fraction}")
        if self.factor_epochs is not None and self.factor_epochs < 1:
            raise ConfigError(f"factor_epochs must be >= 1 (or None for the default), got {self.factor_epochs}")

    @classmethod
    def quick(cls, out: Path | str) -> DemoConfig:
        """A small configuration that goes through every stage in about a minute (used by the tests)."""
        return cls(out=Path(out), patients=24, dicom_size=(320, 192), image_size=(128, 80), epochs=2,
                   batch_size=8, fractions=(0.5, 1.0), seeds=(0,), n_boot=50, detect_epochs=1,
                   detect_fraction=1.0, factor_epochs=2)

    def stages(self) -> tuple[str, ...]:
        """The stages this configuration runs, in order (the optional ones only when switched on)."""
        return tuple(s for s in STAGES if _OPTIONAL_STAGES.get(s, lambda _: True)(self))


# Seconds per unit of the default demo on a quiet 2-core machine (bench/RESULTS.md, "Demo"): per
# generated image (640x384 DICOM, 2 workers), per preprocessed image, per pre-training image at
# 256x160 (validation included), per inferred image at 256x160, per probe fit (C grid of 5), per
# detector training image and per detector-evaluated image (frozen lite tower, 64-channel pyramid,
# 256x160; bootstrap and plots included), per FActOR mapper training image and epoch (on cached feature
# maps, the loop's overhead included), per test image scored by FActOR and its three baselines for
# both attributes (overlays and bootstrap included). The localization costs come from a full demo on
# the quiet 2-core machine (2026-12-04): detect 52 s for both inits, factor 26 s with 6 mapper epochs.
_COST = {"synth": 0.021, "preprocess": 0.01, "train": 0.047, "infer": 0.0125, "probe_fit": 0.75,
         "detect_train": 0.028, "detect_infer": 0.014, "factor_step": 0.0012, "factor_eval": 0.02}


#: The demo's stages in the order they run (names as in ``results.json["stage_seconds"]``).
STAGES: tuple[str, ...] = ("synth", "preprocess", "grid", "pretrain", "zeroshot", "probe", "detect", "factor",
                           "report")
#: Stages a configuration can switch off, with the switch.
_OPTIONAL_STAGES: dict[str, Callable[[DemoConfig], bool]] = {"detect": lambda c: c.detect,
                                                             "factor": lambda c: c.factor}
#: Seconds not spent in any stage (imports, model loading, writing results), on the reference machine.
_OVERHEAD_S = 17.0


def stage_estimates(cfg: DemoConfig) -> dict[str, float]:
    """Rough wall time of each stage of a demo run on a quiet 2-core CPU, by stage name, in run order."""
    images = 4 * cfg.patients
    pixels = cfg.image_size[0] * cfg.image_size[1] / (256 * 160)
    breasts_train = 2 * cfg.patients * 0.7
    test_images = images * 0.2
    train_images, val_images = images * 0.7, images * 0.1
    # per init: training epochs (the drawn patients) + validation after each epoch + the test split
    detect_one = (cfg.detect_epochs * (train_images * cfg.detect_fraction * _COST["detect_train"]
                                       + val_images * _COST["detect_infer"])
                  + test_images * _COST["detect_infer"]) * pixels
    factor_epochs = cfg.factor_epochs or _factor_default_epochs()
    # feature maps of train + val (cached) and of the Grad-CAM probe's train split, the epochs on the
    # cache, then every method on the test split's images that show an attribute
    factor = ((2 * train_images + val_images) * _COST["infer"] * pixels
              + factor_epochs * train_images * _COST["factor_step"]
              + test_images * _COST["factor_eval"] * pixels)
    return {s: v for s, v in {
        "synth": images * _COST["synth"] * cfg.dicom_size[0] * cfg.dicom_size[1] / (640 * 384),
        "preprocess": images * _COST["preprocess"],
        "grid": 1.0,
        "pretrain": cfg.epochs * breasts_train * 2 * _COST["train"] * pixels,
        "zeroshot": len(DEMO_TASKS) * 2 * test_images * _COST["infer"] * pixels,  # two inits
        # probe features (cached across tasks) + the fits
        "probe": (len(cfg.inits) * images * _COST["infer"] * pixels
                  + len(DEMO_TASKS) * len(cfg.inits) * len(cfg.fractions) * len(cfg.seeds) * _COST["probe_fit"]),
        "detect": len(cfg.detect_inits) * detect_one,
        "factor": factor,
        "report": 2.0,
    }.items() if s in cfg.stages()}


def _factor_default_epochs() -> int:
    """``FactorConfig``'s default epochs (imported here: the CLI imports this module without torch)."""
    from mammoclip.train.factor import FactorConfig

    return FactorConfig().epochs


def estimate_seconds(cfg: DemoConfig) -> float:
    """Rough wall time of a demo run on a 2-core CPU (told up front, then revised after each stage)."""
    return sum(stage_estimates(cfg).values()) + _OVERHEAD_S


class _Stages:
    """Prints one line per stage with its duration (the stages themselves show progress) and, after
    each stage, the estimate of the whole run revised from the measured speed.

    The revision scales what the remaining stages were expected to take by how much slower (or
    faster) than the reference machine the finished stages ran: on a loaded machine the log says
    after the first stages that "5 min" will be 40, instead of never saying it.
    """

    def __init__(self, total: int, log: Callable[[str], None], estimates: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.i, self.log = total, 0, log
        self.seconds: dict[str, float] = {}
        self.estimates = dict(estimates or {})
        self.clock = clock
        self.start = clock()
        #: The revised total estimates (seconds), one per finished stage that has stages after it.
        self.revisions: list[float] = []

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.i += 1
        self.log(f"[{self.i}/{self.total}] {what} ...")
        t0 = self.clock()
        value = fn()
        self.seconds[name] = round(self.clock() - t0, 1)
        self.log(f"[{self.i}/{self.total}] {what}: done in {self.seconds[name]:.0f} s")
        self._revise()
        return value

    def _revise(self) -> None:
        expected_done = sum(self.estimates.get(s, 0.0) for s in self.seconds)
        left = [s for s in self.estimates if s not in self.seconds]
        if not left or expected_done <= 0:
            return
        speed = sum(self.seconds.values()) / expected_done  # > 1: slower than the reference machine
        elapsed = self.clock() - self.start
        remaining = speed * sum(self.estimates[s] for s in left)
        self.revisions.append(elapsed + remaining)
        self.log(f"    revised estimate: {(elapsed + remaining) / 60:.1f} min in total, about {remaining / 60:.1f} "
                 f"min left (the stages so far took {speed:.2g}x the reference time)")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> Path:
    """Run the whole demo; returns the path of ``index.html``."""
    import torch

    from mammoclip.data.manifest import load_bundle
    from mammoclip.data.preprocess import PreprocessOptions, preprocess
    from mammoclip.demo_report import write_demo_html
    from mammoclip.evaluate.probe import run_probe
    from mammoclip.evaluate.zeroshot import run_zeroshot
    from mammoclip.models import create_model, load_checkpoint
    from mammoclip.synthetic import generate_cohort
    from mammoclip.train.config import load_config
    from mammoclip.train.pretrain import run_pretraining

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"mammoclip demo: {cfg.patients} synthetic patients, {4 * cfg.patients} images, model mammoclip-lite at "
        f"{cfg.image_size[0]}x{cfg.image_size[1]}; estimated {estimate_seconds(cfg) / 60:.0f} min on 2 CPU cores.")
    stages = _Stages(len(cfg.stages()), log, stage_estimates(cfg))

    dicom_manifest = stages.run("synth", "synthesize the cohort and write DICOMs", lambda: generate_cohort(
        out / "cohort-dicom", n_patients=cfg.patients, seed=cfg.seed, image_size=cfg.dicom_size, fmt="dicom",
        workers=cfg.workers, overwrite=True, progress=cfg.progress))
    prep = stages.run("preprocess", "preprocess DICOM -> PNG (breast crop, VOI window)", lambda: preprocess(
        dicom_manifest, out / "cohort", PreprocessOptions(size=cfg.image_size, flip_to="none"),
        workers=cfg.workers, progress=cfg.progress))
    bundle = load_bundle(prep.manifest)
    grid = stages.run("grid", "draw the cohort grid", lambda: cohort_grid(bundle, out / "figures" / "cohort_grid.png"))

    def _pretrain() -> Any:
        run_cfg = load_config(
            None, None,
            task="pretrain",
            # The MiniLM text tower is already a good sentence encoder: keep it locked (LiT-style) and
            # let the image tower and both projections learn; its features are then memoised per
            # caption, which makes a CPU epoch several times cheaper (docs/training.md).
            model={"name": "mammoclip-lite", "pretrained": True, "lock_text": cfg.lock_text},
            data={"image_text": [str(prep.manifest)], "image_size": list(cfg.image_size), "augment": "light",
                  "text_augment": "shuffle,lexicon:p=0.5"},
            loss={"name": "mammoclip"},
            optim={"lr": cfg.lr, "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 0.5},
            loop={"epochs": cfg.epochs, "batch_size": cfg.batch_size, "precision": "fp32", "workers": 1,
                  "seed": cfg.seed + 10, "log_every": 5, "device": "cpu", "keep_last": 1},
            eval={"zero_shot": list(DEMO_TASKS), "prompt_style": "paper"},
            out_dir=str(out / "runs"), run_name="pretrain",
        )
        return run_pretraining(run_cfg, out_dir=out / "runs" / "pretrain")

    fit = stages.run("pretrain", f"pre-train mammoclip-lite ({cfg.epochs} epochs)", _pretrain)
    if fit.best is None:
        raise RuntimeError("pre-training selected no best checkpoint (no validation split?)")
    curves = training_curves(fit.run_dir / "metrics.jsonl", out / "figures" / "training_curves.png")

    models: dict[str, Any] = {}

    def model_for(init: str) -> Any:
        if init not in models:
            if init == "pretrained":
                models[init] = load_checkpoint(fit.best)
            else:
                models[init] = create_model("mammoclip-lite", pretrained=init == "imagenet",
                                            image_size=cfg.image_size)
            models[init].eval()
        return models[init]

    def _zeroshot() -> dict[tuple[str, str], Any]:
        res: dict[tuple[str, str], Any] = {}
        for task in DEMO_TASKS:
            for init in ("pretrained", "imagenet"):
                res[(task, init)] = run_zeroshot(
                    model_for(init), bundle, task, prompts="ensemble", out_dir=out / "zeroshot" / f"{task}-{init}",
                    split="test", n_boot=cfg.n_boot, model_name=f"mammoclip-lite ({init})", progress=cfg.progress)
        return res

    zs = stages.run("zeroshot", "zero-shot classification (test split)", _zeroshot)

    def _probe() -> dict[str, Any]:
        return {task: run_probe(model_for, bundle, task, fractions=cfg.fractions, seeds=cfg.seeds,
                                inits=cfg.inits, out_dir=out / "probe" / task, n_boot=cfg.n_boot,
                                cache_dir=out / "feature-cache",
                                model_name="mammoclip-lite", progress=cfg.progress)
                for task in DEMO_TASKS}

    probes = stages.run("probe", "linear probes at label fractions vs baselines", _probe)
    models.clear()  # the later stages load their own copies (a frozen or trained tower must not leak back)

    localization: dict[str, Any] | None = None
    if cfg.detect:
        localization = stages.run("detect", f"{DETECT_CLASS} detection ({', '.join(cfg.detect_inits)} init, frozen "
                                  "tower)", lambda: run_detection(cfg, bundle, fit.best, log))
    attribution: dict[str, Any] | None = None
    if cfg.factor:
        attribution = stages.run("factor", "Mammo-FActOR attribution vs baselines",
                                 lambda: run_attribution(cfg, bundle, fit.best, log))

    results = collect_results(cfg, bundle, prep, fit, zs, probes, grid, curves, stages.seconds,
                              time.perf_counter() - t_start, localization=localization, attribution=attribution)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    page = stages.run("report", "write the HTML report", lambda: write_demo_html(out / "results.json"))
    log(f"Done in {results['total_seconds'] / 60:.1f} min. Open the report: {page.resolve()}")
    return page


# ------------------------------------------------------------------------------ localization stages ---


def detect_anchor_scale(image_size: tuple[int, int]) -> float:
    """Anchor base size (x stride) for the demo's detector: 3 at 256x160, scaled with the image height.

    The taps' strides are fixed (8, 16, 32) while the lesions shrink with the image, so the anchors
    follow the image: 3 x 8 = 24 px at P3 fits the synthetic masses (12-31 px) at 256x160
    (docs/detection.md §7), and at the quick demo's 128x80 the same masses are half as many pixels.
    """
    return 3.0 * image_size[0] / 256


def _skipped(stage: str, err: Exception, log: Callable[[str], None]) -> dict[str, Any]:
    """A stage that the cohort cannot support (e.g. no mass box in a tiny test split) is reported, not fatal."""
    log(f"    {stage} skipped: {err}")
    return {"skipped": str(err)}


def run_detection(cfg: DemoConfig, bundle: Any, checkpoint: Path, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Train a mass RetinaNet per init in ``cfg.detect_inits`` (frozen tower) and evaluate it on the test split.

    Each run is given the loaded pre-training checkpoint: with ``init="pretrained"`` the detector trains
    a copy of its tower, and with ``imagenet`` / ``random`` it builds a tower of the same architecture
    with those weights (``mammoclip.detect.load_image_tower``).

    Returns:
        ``{"runs": {init: {"run_dir", "eval_dir", "best_epoch", "results"}}, "settings": ...}``, or
        ``{"skipped": reason}`` when the cohort has no mass box to train or test on.
    """
    from mammoclip.detect import DetectorCfg, DetectTrainCfg, evaluate_detector, train_detector
    from mammoclip.errors import DataError
    from mammoclip.models import load_checkpoint

    det_cfg = DetectorCfg(classes=[DETECT_CLASS], image_size=cfg.image_size, fpn_channels=64,
                          anchor_scale=detect_anchor_scale(cfg.image_size))
    runs: dict[str, Any] = {}
    for init in cfg.detect_inits:
        run_dir = cfg.out / "runs" / f"detect-{init}"
        train_cfg = DetectTrainCfg(checkpoint=str(checkpoint), init=init, freeze_encoder=True,
                                   label_fraction=cfg.detect_fraction, seed=cfg.seed, epochs=cfg.detect_epochs,
                                   batch_size=8, lr=1e-3, augment="flip", device="cpu")
        try:
            run = train_detector(bundle, det_cfg, train_cfg, run_dir, model=load_checkpoint(checkpoint),
                                 log_fn=lambda line: log(f"    {line}"))
            if run.best is None:
                raise RuntimeError(f"{run_dir}: detector training selected no epoch")
            res = evaluate_detector(run.best, bundle, split="test", out_dir=run_dir / "test", n_boot=cfg.n_boot,
                                    seed=cfg.seed)
        except DataError as err:
            return _skipped("detection", err, log)
        runs[init] = {"run_dir": str(run_dir.relative_to(cfg.out)), "eval_dir": str((run_dir / "test").relative_to(cfg.out)),
                      "best_epoch": run.best_epoch, "results": res}
    return {"runs": runs, "settings": {"detector": det_cfg.to_dict(), "epochs": cfg.detect_epochs,
                                       "label_fraction": cfg.detect_fraction, "lr": 1e-3, "augment": "flip"}}


def run_attribution(cfg: DemoConfig, bundle: Any, checkpoint: Path, log: Callable[[str], None] = print
                    ) -> dict[str, Any]:
    """Train a Mammo-FActOR mapper on the pre-trained model and score it and its baselines on the test split.

    The mapper uses ``FactorConfig``'s defaults (but for ``cfg.factor_epochs``), so improvements to the
    method's defaults show up here without a change to the demo.

    Returns:
        ``{"run_dir", "eval_dir", "results"}`` (the results of ``evaluate_localization``), or
        ``{"skipped": reason}`` when the cohort cannot support the stage.
    """
    from mammoclip.attribution.evaluation import evaluate_localization
    from mammoclip.errors import DataError
    from mammoclip.models import load_checkpoint
    from mammoclip.train.factor import FactorConfig, train_factor

    run_dir = cfg.out / "runs" / "factor"
    factor_cfg = FactorConfig(attributes=list(DEMO_TASKS), device="cpu")
    if cfg.factor_epochs is not None:
        factor_cfg.epochs = cfg.factor_epochs
    model = load_checkpoint(checkpoint).eval()
    try:
        run = train_factor(model, bundle, factor_cfg, out_dir=run_dir)
        log(f"    mapper trained: {run.fit.steps} steps, kept {run.mapper_dir.relative_to(cfg.out)}")
        res = evaluate_localization(model, run.mapper, bundle, split="test", baselines=FACTOR_BASELINES,
                                    n_boot=cfg.n_boot, out_dir=run_dir / "eval", progress=cfg.progress)
    except DataError as err:
        return _skipped("attribution", err, log)
    return {"run_dir": str(run_dir.relative_to(cfg.out)), "eval_dir": str((run_dir / "eval").relative_to(cfg.out)),
            "epochs": factor_cfg.epochs, "results": res}


# ----------------------------------------------------------------------------------------- figures ---

_BOX_COLOURS = {"mass": (230, 60, 60), "calcification": (240, 200, 30), "distortion": (60, 140, 240),
                "asymmetry": (200, 60, 200)}


def cohort_grid(bundle: Any, path: Path, n_breasts: int = 6) -> Path:
    """A grid of CC/MLO pairs (preprocessed images) with their lesion boxes, for the report."""
    import cv2

    from mammoclip.imaging.imageio import read_image

    images = bundle.images
    boxes = bundle.boxes
    has = images.assign(n=images[["mass", "calcification"]].fillna(0).sum(axis=1))
    breasts = (has.groupby(["patient_id", "laterality"])["n"].max().sort_values(ascending=False)
               .index[:n_breasts].tolist())
    tiles = []
    for pid, lat in breasts:
        pair = []
        for view in ("CC", "MLO"):
            row = images[(images["patient_id"] == pid) & (images["laterality"] == lat) & (images["view"] == view)]
            if row.empty:
                continue
            img = read_image(bundle.abspath(str(row["path"].iloc[0])))
            img8 = (img / max(1, int(img.max())) * 255).astype(np.uint8) if img.dtype != np.uint8 else img
            rgb = cv2.cvtColor(img8, cv2.COLOR_GRAY2RGB)
            for b in boxes[boxes["image_id"] == row["image_id"].iloc[0]].itertuples():
                colour = _BOX_COLOURS.get(str(b.label))
                if colour is not None:
                    cv2.rectangle(rgb, (int(b.xmin), int(b.ymin)), (int(b.xmax), int(b.ymax)), colour, 1)
            pair.append(rgb)
        if len(pair) == 2:
            tiles.append(np.hstack(pair))
    if not tiles:
        raise RuntimeError("no complete CC/MLO pair to draw")
    rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    grid = np.vstack(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 2 if grid.shape[1] < 900 else 1
    grid = cv2.resize(grid, (grid.shape[1] * scale, grid.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path


def training_curves_figure(records: list[dict[str, Any]]) -> Any:
    """The matplotlib figure of :func:`training_curves` (returned unsaved, so tests can read its axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from mammoclip.evaluate.report import metric_label

    df = pd.DataFrame(records)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for key in [k for k in df.columns if k.endswith("loss") and not k.startswith("val")]:
        d = df[["step", key]].dropna()
        axes[0].plot(d["step"], d[key], label=f"{metric_label(key)} (training, per logged step)", lw=1)
    for key in [k for k in df.columns if k.startswith("val") and k.endswith("loss")]:
        d = df[["step", key]].dropna()
        axes[0].plot(d["step"], d[key], "o-", label=f"{metric_label(key)} (per epoch)")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("contrastive loss")
    axes[0].set_title("pre-training loss")
    for key in [k for k in df.columns if k.startswith("zeroshot/") and k.endswith("auc")]:
        d = df[["step", key]].dropna()
        axes[1].plot(d["step"], d[key], "o-", label=metric_label(key))
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--", label="chance (AUC 0.5)")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("zero-shot AUC")
    axes[1].set_title("zero-shot AUC on the validation split")
    for ax in axes:  # outside the axes: a legend never hides a point
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def training_curves(metrics_path: Path, path: Path) -> Path:
    """Loss curves (train per logged step, validation per epoch) and zero-shot AUC per epoch."""
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig = training_curves_figure(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- results ---


def _metric_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"value": entry.get("value"), "ci_low": entry.get("ci_low"), "ci_high": entry.get("ci_high")}


#: Detection metrics carried into the demo's ``results.json`` (the run's own results.json has them all).
DETECT_METRICS: tuple[str, ...] = ("ap50", "froc_mean", "coco_ap")
#: Weak-localization metrics carried into the demo's ``results.json`` (those of FActOR's verdict).
FACTOR_METRICS: tuple[str, ...] = ("pointing", "hit@0.25")


def _finite(value: Any) -> float | None:
    """A float for JSON, None for a missing or non-finite number (JSON has no NaN)."""
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _estimate(entry: dict[str, Any]) -> dict[str, float | None]:
    return {k: _finite(entry.get(k)) for k in ("value", "ci_low", "ci_high")}


def localization_summary(localization: dict[str, Any]) -> dict[str, Any]:
    """The detection headline of ``results.json``: per init and protocol, AP@0.5, FROC, COCO AP with CIs."""
    if "skipped" in localization:
        return {"class": DETECT_CLASS, "skipped": localization["skipped"]}
    inits: dict[str, Any] = {}
    for init, run in localization["runs"].items():
        entry = run["results"]["classes"][DETECT_CLASS]
        inits[init] = {
            "run_dir": run["run_dir"], "eval_dir": run["eval_dir"], "best_epoch": run["best_epoch"],
            "n_images": entry["n_images"], "n_positive_images": entry["n_positive_images"], "n_boxes": entry["n_boxes"],
            "protocols": {protocol: {m: _estimate(entry[protocol][m]) for m in DETECT_METRICS}
                          for protocol in ("all_images", "positives_only")},
        }
    return {"class": DETECT_CLASS, "split": "test", "settings": localization["settings"], "inits": inits}


def attribution_summary(attribution: dict[str, Any]) -> dict[str, Any]:
    """The FActOR headline of ``results.json``: every method's pointing and hit@0.25 with CIs, and the verdict.

    ``verdict[attribute]`` is True only when FActOR's interval lies wholly above the breast prior's on
    every metric of ``beats_breast_prior`` (as ``evaluate_localization`` computed it), False when it
    does not, None when it could not be decided.
    """
    if "skipped" in attribution:
        return {"skipped": attribution["skipped"]}
    res = attribution["results"]
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    n_images: dict[str, int] = {}
    for row in res["metrics"]:
        if row["metric"] in FACTOR_METRICS:
            metrics.setdefault(row["method"], {}).setdefault(row["attribute"], {})[row["metric"]] = _estimate(row)
            n_images[row["attribute"]] = int(row["n_images"])
    verdict: dict[str, bool | None] = {}
    for attribute, by_metric in res["beats_breast_prior"].items():
        values = list(by_metric.values())
        verdict[attribute] = None if any(v is None for v in values) else all(values)
    return {"split": res["split"], "run_dir": attribution["run_dir"], "eval_dir": attribution["eval_dir"],
            "epochs": attribution["epochs"], "tap": res.get("tap"), "methods": res["methods"],
            "n_images": n_images, "metrics": metrics, "beats_breast_prior": res["beats_breast_prior"],
            "verdict": verdict}


def collect_results(cfg: DemoConfig, bundle: Any, prep: Any, fit: Any, zs: dict[Any, Any],
                    probes: dict[str, Any], grid: Path, curves: Path, seconds: dict[str, float],
                    total: float, *, localization: dict[str, Any] | None = None,
                    attribution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Gather what the run measured into the ``results.json`` structure that the page renders."""
    import pandas as pd  # here, not at import: the CLI imports this module for DemoConfig's defaults
    out = cfg.out
    images = bundle.images
    splits = {}
    for split, part in images.groupby("split"):
        splits[str(split)] = {"images": int(len(part)), "mass": int(part["mass"].fillna(0).sum()),
                              "calcification": int(part["calcification"].fillna(0).sum())}
    history = [h for h in fit.history if "val/loss" in h]
    table: list[dict[str, Any]] = []
    for (task, init), res in zs.items():
        table.append({"evaluation": "zero-shot", "task": task, "init": init, "fraction": None,
                      "metric": "AUC (per image)", **_metric_entry(res["metrics"]["image"]["auc"])})
        table.append({"evaluation": "zero-shot", "task": task, "init": init, "fraction": None,
                      "metric": "AUC (per breast)", **_metric_entry(res["metrics"]["breast"]["auc"])})
    for task, res in probes.items():
        eff = pd.DataFrame(res["data_efficiency"])
        pred_path = out / "probe" / task / "predictions.csv"
        preds = pd.read_csv(pred_path) if pred_path.exists() else None
        for (init, fraction), part in eff.groupby(["init", "fraction"], sort=False):
            vals = part["test_auc"].to_numpy(dtype=float)
            ci = (probe_auc_ci(preds, str(init), float(fraction), n_boot=cfg.n_boot, seed=cfg.seed)
                  if preds is not None else (None, None))
            table.append({"evaluation": "linear probe", "task": task, "init": init, "fraction": float(fraction),
                          "metric": f"AUC (per image, mean of {len(vals)} seeds)", "value": float(vals.mean()),
                          "ci_low": ci[0], "ci_high": ci[1]})
    figures: dict[str, dict[str, str]] = {
        "cohort_grid": {"path": str(grid.relative_to(out)),
                        "caption": "Preprocessed CC/MLO pairs with their lesion boxes (red: mass, yellow: calcification)."},
        "training_curves": {"path": str(curves.relative_to(out)),
                            "caption": "Pre-training loss (left) and zero-shot AUC on the validation split after "
                                       "each epoch (right; dashed: chance)."},
    }
    for task in DEMO_TASKS:
        figures[f"zeroshot_roc_{task}"] = {
            "path": f"zeroshot/{task}-pretrained/roc.png",
            "caption": f"Zero-shot ROC, {task}, pre-trained model (test split). Shaded bands: pointwise 95% "
                       "confidence intervals of the sensitivity (patient bootstrap)."}
        figures[f"data_efficiency_{task}"] = {
            "path": f"probe/{task}/data_efficiency.png",
            "caption": f"Linear-probe test AUC vs label fraction, {task}: mean over {len(cfg.seeds)} seed(s); "
                       "error bars: ±1 standard deviation over the seeds (the spread of the label draw and the "
                       "fit, not a confidence interval; the table gives those)."}
    figures = {k: v for k, v in figures.items() if (out / v["path"]).exists()}
    files = {"results.json": "results.json", "cohort manifest": "cohort/manifest.csv",
             "pre-training metrics": "runs/pretrain/metrics.jsonl"}
    for task in DEMO_TASKS:
        files[f"zero-shot {task} report"] = f"zeroshot/{task}-pretrained/index.html"
        files[f"linear probe {task} report"] = f"probe/{task}/index.html"
    loc = localization_summary(localization) if localization is not None else None
    for init, run in (loc or {}).get("inits", {}).items():
        files[f"detection ({init} init) report"] = f"{run['eval_dir']}/index.html"
        files[f"detection ({init} init) results"] = f"{run['eval_dir']}/results.json"
    attr = attribution_summary(attribution) if attribution is not None else None
    if attr is not None and "eval_dir" in attr:
        files["attribution (FActOR and baselines) report"] = f"{attr['eval_dir']}/index.html"
        files["attribution (FActOR and baselines) results"] = f"{attr['eval_dir']}/results.json"
    files = {k: v for k, v in files.items() if (out / v).exists()}
    extra: dict[str, Any] = {}
    if loc is not None:
        extra["localization"] = loc
    if attr is not None:
        extra["attribution"] = attr
    return {
        "version": mammoclip.__version__,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, python {platform.python_version()}",
        "model": "mammoclip-lite",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "total_seconds": round(total, 1),
        "stage_seconds": seconds,
        "cohort": {"patients": cfg.patients, "images": int(len(images)), "failures": int(prep.failed),
                   "image_size": f"{cfg.image_size[0]}x{cfg.image_size[1]}", "splits": splits},
        "pretrain": {"epochs": cfg.epochs, "steps": int(fit.steps), "seconds": seconds.get("pretrain"),
                     "val_loss_first": history[0]["val/loss"] if history else None,
                     "val_loss_best": min(h["val/loss"] for h in history) if history else None,
                     "history": history},
        "table": table,
        **extra,
        "figures": figures,
        "files": files,
    }


def probe_auc_ci(predictions: Any, init: str, fraction: float, *, n_boot: int, seed: int = 0
                 ) -> tuple[float | None, float | None]:
    """95% CI of a linear-probe row: patient bootstrap of the AUC of the seed-averaged test scores.

    Each seed's head scores the same test images; averaging their scores per image gives one
    prediction per image, and resampling patients gives the interval. (The row's value stays the
    mean of the seeds' AUCs, as the probe reports it; the interval is of the averaged predictions.)

    Args:
        predictions: The probe's ``predictions.csv`` (``init``, ``fraction``, ``seed``, ``image_id``,
            ``patient_id``, ``label``, ``p_<class>``).
        init, fraction: The row.
        n_boot: Bootstrap replicates (0: no interval).
        seed: Seed of the resampling (the demo's; nothing else draws from it).

    Returns:
        ``(low, high)``, or ``(None, None)`` when the row has no predictions, one class only, or
        ``n_boot`` is 0.
    """
    from mammoclip.evaluate.metrics import binary_metrics, bootstrap_metrics

    part = predictions[(predictions["init"] == init) & np.isclose(predictions["fraction"], fraction)]
    score = [c for c in part.columns if c.startswith("p_")]
    if part.empty or not score or n_boot <= 0:
        return None, None
    avg = part.groupby("image_id", sort=True).agg(label=("label", "first"), patient_id=("patient_id", "first"),
                                                  score=(score[-1], "mean"))
    y = avg["label"].to_numpy()
    if len(np.unique(y)) < 2:
        return None, None
    est = bootstrap_metrics(lambda a, b: {"auc": binary_metrics(a, b)["auc"]}, y, avg["score"].to_numpy(),
                            avg["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)["auc"]
    if not (np.isfinite(est.ci_low) and np.isfinite(est.ci_high)):
        return None, None
    return float(est.ci_low), float(est.ci_high)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
