"""FActOR localization sweep on the demo's synthetic cohort (docs/attribution.md §5).

Setting: the demo-sized CLIP-pre-trained ``mammoclip-lite`` at 256x160 and its 300-patient cohort
(``mammoclip demo`` output: ``DEMO/cohort/manifest.csv`` and ``DEMO/runs/pretrain/best``). When
``--demo`` does not hold them, the demo runs there once (about 15 minutes on 2 cores) and later
sweeps reuse it. Every configuration trains a mapper with :func:`mammoclip.train.factor.train_factor`
on the train split (best validation epoch kept) and is scored with
:func:`mammoclip.attribution.evaluation.evaluate_localization` on the held-out test split against the
breast prior (and ``top_channels`` once), with 95% patient-bootstrap intervals.

The frozen encoder's feature maps are computed once per tap and cached in ``CACHE/`` (the encoder
forward is nearly all of a run's cost); the training code path is otherwise the library's.

Usage::

    python bench/factor_sweep.py --configs '[{}, {"shift": 2, "hflip": true}]' --seeds 10,11

Each configuration is a JSON object of :class:`~mammoclip.train.factor.FactorConfig` fields
(``{}``: the defaults). Prints a table and writes ``bench/out/factor_sweep.json`` (``--out``),
appending to the rows already there so a sweep can be run one configuration at a time. One
configuration takes 1-2 minutes on a loaded 2-core machine once the feature maps are cached (about
40 s for the 1,200 demo images; ``--extra-patients 1000`` adds ~4 minutes once, and ~4 minutes per
5-epoch configuration).

The table of docs/attribution.md §5 came from (``DEMO`` an existing demo output)::

    python bench/factor_sweep.py --demo DEMO --n-boot 500 --seeds 10 --configs '[{}, {"shift": 2, "hflip": true,
        "vflip": true}, {"shift": 4, "hflip": true, "vflip": true}, {"descriptor_norm": "image"},
        {"descriptor_norm": "channel"}, {"channel_ids": true}, {"descriptor_norm": "sorted"},
        {"descriptor_norm": "sorted", "channel_ids": true}, ...]'
    python bench/factor_sweep.py --demo DEMO --n-boot 500 --seeds 10 --label-channel --extra-patients 1000 \
        --configs '[{"epochs": 5, "descriptor_norm": "image"}, {"epochs": 5}]'
    python bench/factor_sweep.py --demo DEMO --n-boot 1000 --seeds 11,12 \
        --configs '[{"descriptor_norm": "sorted", "channel_ids": true}, {"descriptor_norm": "sorted"}]'

Heatmap settings without retraining: ``--reuse`` loads the mapper a previous sweep saved for the same
configuration and seed (``CACHE/runs/``), ``--heatmaps`` scores it under several heatmap settings
(``top_k`` channels, softmax ``temperature`` of their weights) in one pass over the test images (the
encoder's map is computed once per batch and shared by the settings)::

    python bench/factor_sweep.py --demo DEMO --reuse --seeds 10,11,12 --configs '[{"descriptor_norm": "sorted"}]' \
        --heatmaps '[{"top_k": 1}, {"top_k": 4, "temperature": 0.02}, {"top_k": 32}]'

``--select auc`` (with ``--heatmaps``, fresh runs) keeps every epoch's checkpoint and scores each head at
the epoch of its own best validation AUC instead of the library's lowest mixed validation loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "out" / "factor_sweep.json"


def _demo(folder: Path) -> tuple[Path, Path]:
    """``(manifest, checkpoint)`` of a demo run in ``folder``, running the demo there when missing."""
    manifest, ckpt = folder / "cohort" / "manifest.csv", folder / "runs" / "pretrain" / "best"
    if not (manifest.is_file() and ckpt.is_dir()):
        from mammoclip.demo import DemoConfig, run_demo

        run_demo(DemoConfig(out=folder, progress=False))
    return manifest, ckpt


def _extra_cohort(bundle: Any, cache_dir: Path, n_patients: int) -> Any:
    """``bundle`` plus ``n_patients`` more synthetic training patients made as the demo makes its cohort.

    Generated once (seed 1, DICOMs at the demo's detector size, preprocessed to its input size), all
    in the train split; their ids get an ``x`` prefix so they cannot collide with the demo's patients.
    Validation and test stay the demo's.
    """
    import pandas as pd

    from mammoclip.data.manifest import Bundle, load_bundle
    from mammoclip.data.preprocess import PreprocessOptions, preprocess
    from mammoclip.demo import DemoConfig
    from mammoclip.synthetic import generate_cohort

    demo = DemoConfig()
    folder = cache_dir / f"extra-{n_patients}"
    manifest = folder / "cohort" / "manifest.csv"
    if not manifest.is_file():
        dicoms = generate_cohort(folder / "dicom", n_patients=n_patients, seed=1, image_size=demo.dicom_size,
                                 fmt="dicom", split_fractions=(1.0, 0.0, 0.0), workers=demo.workers, progress=False)
        preprocess(dicoms, folder / "cohort", PreprocessOptions(size=demo.image_size, flip_to="none"),
                   workers=demo.workers, progress=False)
    extra = load_bundle(manifest)

    def prefixed(df: pd.DataFrame, root: Path | None = None) -> pd.DataFrame:
        df = df.copy()
        for col in ("image_id", "patient_id", "study_id"):
            if col in df.columns:
                df[col] = "x" + df[col].astype(str)
        for col in ("path", "mask_path"):
            if root is not None and col in df.columns:
                df[col] = [str(root / v) if isinstance(v, str) and v else v for v in df[col]]
        return df

    images = prefixed(extra.images, extra.root).assign(split="train")
    boxes = prefixed(extra.boxes, extra.root)
    reports = prefixed(extra.reports) if extra.reports is not None else None
    return Bundle(pd.concat([bundle.images, images], ignore_index=True),
                  pd.concat([bundle.boxes, boxes], ignore_index=True),
                  pd.concat([bundle.reports, reports], ignore_index=True)
                  if bundle.reports is not None and reports is not None else bundle.reports, bundle.root)


def _cached_feature_maps(clip: Any, bundle: Any, cache_dir: Path, tag: str) -> Any:
    """A drop-in for ``train.factor.feature_maps`` that serves rows from one cache of the whole cohort."""
    from mammoclip.train import factor

    compute = factor.feature_maps
    store: dict[Any, tuple[dict[str, int], torch.Tensor]] = {}

    def lookup(model: Any, sub: Any, *, batch_size: int = 16, num_workers: int = 0, tap: int | None = None) -> torch.Tensor:
        if model is not clip:
            return compute(model, sub, batch_size=batch_size, num_workers=num_workers, tap=tap)
        if tap not in store:
            path = cache_dir / f"fmaps-{tag}-tap{tap}.pt"
            if path.is_file():
                ids, maps = torch.load(path)
            else:
                maps = compute(clip, bundle, batch_size=batch_size, num_workers=num_workers, tap=tap)
                ids = [str(v) for v in bundle.images["image_id"]]
                cache_dir.mkdir(parents=True, exist_ok=True)
                torch.save((ids, maps), path)
            store[tap] = ({k: i for i, k in enumerate(ids)}, maps)
        index, maps = store[tap]
        return maps[[index[str(v)] for v in sub.images["image_id"]]]

    return lookup


#: attribute -> channel, filled by :func:`_label_channels` for the ``label_channel`` diagnostic.
_LABEL_CHANNELS: dict[str, int] = {}


def _label_channels(clip: Any, bundle: Any, attributes: list[Any], maps: Any, tap: int | None) -> dict[str, Any]:
    """Per attribute, the channel whose maximum best separates the training images' labels (AUC).

    A diagnostic, not a method of the library: it asks whether the frozen map holds a channel that
    finds the lesion, chosen with the same image-level labels the mapper gets (no boxes).
    """
    from sklearn.metrics import roc_auc_score

    from mammoclip.attribution.heatmap import register_heatmap_method
    from mammoclip.attribution.mapper import tap_feature_map
    from mammoclip.train.factor import attribute_labels

    train = bundle.split("train")
    y, known = attribute_labels(train, attributes)
    peak = maps(clip, train, tap=tap).float().flatten(2).amax(-1).numpy()  # (N, C)
    chosen = {}
    for i, spec in enumerate(attributes):
        aucs = [roc_auc_score(y[known, i], peak[known, c]) for c in range(peak.shape[1])]
        _LABEL_CHANNELS[spec.name] = int(np.argmax(aucs))
        chosen[spec.name] = {"channel": int(np.argmax(aucs)), "train_auc": round(float(np.max(aucs)), 3)}

    @register_heatmap_method("label_channel")
    def label_channel(model: Any, images: torch.Tensor, ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = tap_feature_map(model, images, tap).float()  # (B, C, h, w)
        picked = fmap[:, [_LABEL_CHANNELS[a] for a in ctx.attributes]]  # (B, A, h, w)
        return picked, picked.flatten(2).amax(-1)

    return chosen


def _aucs(run: Any, clip: Any, bundle: Any, split: str, maps: Any) -> dict[str, float]:
    """AUC of the image score ``max_c cos`` that the loss trains, per attribute, on ``split``."""
    from sklearn.metrics import roc_auc_score

    from mammoclip.train.factor import attribute_labels

    sub = bundle.split(split)
    y, known = attribute_labels(sub, run.attributes)
    with torch.no_grad():
        scores = run.mapper.similarities(maps(clip, sub, tap=run.mapper.tap).float()).amax(dim=1).numpy()
    return {s.name: round(float(roc_auc_score(y[known, i], scores[known, i])), 3) for i, s in enumerate(run.attributes)}


def _shared_feature_maps() -> None:
    """Let the explainers of one batch share the encoder's map (``--heatmaps`` scores one mapper many ways).

    ``localization_table`` calls every explainer on the same image tensor, so the last ``(images, tap)``
    result is kept and returned again; the maps are those the library computes, only not recomputed.
    The batch itself is held and compared by identity, so a later batch cannot be mistaken for it.
    """
    from mammoclip.attribution import heatmap

    compute = heatmap.tap_feature_map
    last: dict[str, Any] = {}

    def shared(model: Any, images: torch.Tensor, tap: int | None = None) -> torch.Tensor:
        if not (last.get("images") is images and last.get("model") is model and last.get("tap") == tap):
            last.update(images=images, model=model, tap=tap, value=compute(model, images, tap))
        return last["value"]

    heatmap.tap_feature_map = shared  # type: ignore[assignment]  # factor_maps reads it from the module


def _heatmap_sweep(clip: Any, mapper: Any, bundle: Any, settings: list[dict[str, Any]],
                   n_boot: int) -> Any:
    """Summary (``localization.summarize``) of FActOR under each heatmap setting, plus the breast prior.

    Methods are named ``factor k=K t=T``; ``top_k`` and ``temperature`` default to the library's.
    """
    from mammoclip.attribution.heatmap import DEFAULT_TOP_K, FACTOR_TEMPERATURE, Explainer, HeatmapContext
    from mammoclip.attribution.localization import localization_table, summarize

    explainers = {}
    for s in settings:
        k, t = int(s.get("top_k", DEFAULT_TOP_K)), float(s.get("temperature", FACTOR_TEMPERATURE))
        explainers[f"factor k={k} t={t:g}"] = Explainer(clip, "factor", HeatmapContext(mapper.names, mapper=mapper,
                                                                                       top_k=k, temperature=t))
    explainers["breast_prior"] = Explainer(clip, "breast_prior", HeatmapContext(mapper.names, tap=mapper.tap))
    table = localization_table(explainers, bundle.split("test"), mapper.attributes, batch_size=8)
    return summarize(table, n_boot=n_boot)


def _auc_selected(run_dir: Path, clip: Any, bundle: Any, settings: list[dict[str, Any]], n_boot: int,
                  maps: Any) -> tuple[Any, dict[str, int], dict[str, dict[str, float]]]:
    """Each head taken from the epoch where *its own* validation AUC peaks, instead of the mixed loss.

    Needs every epoch's checkpoint (``--select auc`` keeps them). The heads are independent (attribute
    a's loss reaches head a only), so scoring attribute a with the mapper of a's epoch is scoring the
    stitched mapper. Returns the summary, ``attribute -> epoch`` and ``{"train_auc", "test_auc"}``.
    """
    from types import SimpleNamespace

    import pandas as pd

    from mammoclip.attribution.mapper import load_mapper
    from mammoclip.train.loop import list_checkpoints

    mappers = [load_mapper(ck)[0] for ck in list_checkpoints(run_dir)]  # one per epoch, in order
    val = [_aucs(SimpleNamespace(mapper=m, attributes=m.attributes), clip, bundle, "val", maps) for m in mappers]
    names = mappers[0].names
    picked = {a: int(np.argmax([v[a] for v in val])) for a in names}
    parts: list[Any] = []
    aucs: dict[str, dict[str, float]] = {"train_auc": {}, "test_auc": {}}
    for e in sorted(set(picked.values())):
        m = mappers[e]
        summary = _heatmap_sweep(clip, m, bundle, settings, n_boot)
        mine = [a for a in names if picked[a] == e]
        parts.append(summary[summary["attribute"].isin(mine)])
        for split in ("train", "test"):
            got = _aucs(SimpleNamespace(mapper=m, attributes=m.attributes), clip, bundle, split, maps)
            aucs[f"{split}_auc"].update({a: got[a] for a in mine})
    return pd.concat(parts, ignore_index=True), {a: e + 1 for a, e in picked.items()}, aucs


def _fmt(m: dict[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("/tmp/mammoclip-factor-sweep/demo"),
                        help="demo output folder (created once when missing)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mammoclip-factor-sweep/cache"))
    parser.add_argument("--configs", default="[{}]", help="JSON list of FactorConfig overrides")
    parser.add_argument("--seeds", default="10", help="comma-separated mapper seeds")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label-channel", action="store_true",
                        help="also score the single channel chosen by training labels (a diagnostic)")
    parser.add_argument("--extra-patients", type=int, default=0,
                        help="more synthetic training patients for the mapper (generated once into CACHE)")
    parser.add_argument("--reuse", action="store_true",
                        help="load the mapper a previous sweep trained for the same configuration and seed")
    parser.add_argument("--heatmaps", default=None,
                        help='JSON list of heatmap settings to score each mapper under, e.g. '
                             '\'[{"top_k": 1}, {"top_k": 8, "temperature": 0.02}]\'')
    parser.add_argument("--select", choices=("loss", "auc"), default="loss",
                        help="with --heatmaps: score the lowest-validation-loss epoch (the library's choice) or "
                             "each head at the epoch of its own best validation AUC (keeps every checkpoint)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.select == "auc" and (args.heatmaps is None or args.reuse):
        parser.error("--select auc needs --heatmaps and fresh runs (no --reuse): it reads every epoch's checkpoint")
    torch.set_num_threads(args.threads)

    from mammoclip.attribution.evaluation import evaluate_localization
    from mammoclip.data.manifest import load_bundle
    from mammoclip.models import load_checkpoint
    from mammoclip.train import factor
    from mammoclip.train.factor import FactorConfig, image_fingerprint, train_factor

    manifest, ckpt = _demo(args.demo)
    clip = load_checkpoint(ckpt).eval()
    bundle = load_bundle(manifest)
    tag = image_fingerprint(clip)
    if args.extra_patients:
        bundle = _extra_cohort(bundle, args.cache, args.extra_patients)
        tag += f"-extra{args.extra_patients}"
    maps = _cached_feature_maps(clip, bundle, args.cache, tag)
    if args.heatmaps is not None:
        _shared_feature_maps()
    if args.select == "auc":  # keep every epoch's checkpoint, not the last two
        loop_config = factor.LoopConfig
        factor.LoopConfig = lambda **kw: loop_config(**{**kw, "keep_last": 10**6})  # type: ignore[misc,assignment]
    factor.feature_maps = maps  # type: ignore[assignment]  # train_factor reads it from the module
    old = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    rows: list[dict[str, Any]] = old["rows"]
    baselines_done = any(r.get("method") == "top_channels" for r in rows)
    extra_methods: tuple[str, ...] = ()
    if args.label_channel:
        from mammoclip.attribution.attributes import resolve_attributes

        tap = FactorConfig().tap
        print("label_channel:", _label_channels(clip, bundle, resolve_attributes(FactorConfig().attributes), maps, tap))
        extra_methods = ("label_channel",)
    for overrides in json.loads(args.configs):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = json.dumps(overrides, sort_keys=True)
            cfg = FactorConfig(**{**overrides, "seed": seed, "device": "cpu"})
            t0 = time.time()
            run_dir = args.cache / "runs" / f"{hashlib.sha1(name.encode()).hexdigest()[:10]}-{seed}"
            if args.reuse and (run_dir / "best" / "mapper.json").is_file():
                run, val = _reused(run_dir, cfg)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
                run = train_factor(clip, bundle, cfg, out_dir=run_dir)
                val = [h.get("val/loss") for h in run.fit.history]
            train_s = time.time() - t0
            best_epoch = int(np.nanargmin([v if v is not None else np.nan for v in val])) + 1 if any(val) else None
            if args.heatmaps is not None:
                _heatmap_rows(rows, overrides, seed, clip, run, bundle, json.loads(args.heatmaps), args, best_epoch,
                              maps, run_dir)
                _write(args, manifest, ckpt, rows)
                continue
            bl = (("breast_prior",) if baselines_done else ("top_channels", "breast_prior")) + extra_methods
            res = evaluate_localization(clip, run.mapper, bundle, split="test", baselines=bl, n_boot=args.n_boot)
            by = {(m["method"], m["attribute"], m["metric"]): m for m in res["metrics"]}
            for method in ("factor", *bl):
                row: dict[str, Any] = {"config": {**overrides, **({"extra_patients": args.extra_patients}
                                                                     if args.extra_patients else {})},
                                       "seed": seed, "method": method}
                for attr in ("mass", "calcification"):
                    for metric in ("pointing", "hit@0.25"):
                        m = by.get((method, attr, metric))
                        if m is not None:
                            row[f"{attr} {metric}"] = {k: round(float(m[k]), 3) for k in ("value", "ci_low", "ci_high")}
                            row[f"{attr} n"] = [int(m["n_images"]), int(m["n_patients"])] if "n_images" in m \
                                else int(m["n_patients"])
                if method == "factor":
                    row.update({"train_auc": _aucs(run, clip, bundle, "train", maps),
                                "test_auc": _aucs(run, clip, bundle, "test", maps), "best_epoch": best_epoch,
                                "beats_breast_prior": res["beats_breast_prior"], "train_seconds": round(train_s, 1)})
                else:
                    row["seed"] = None
                if method == "factor" or not any(r["method"] == method for r in rows):
                    rows.append(row)
            baselines_done = True
            _write(args, manifest, ckpt, rows)
            print(_line(rows[-1] if rows[-1]["method"] == "factor" else next(r for r in reversed(rows)
                                                                             if r["method"] == "factor")), flush=True)
    print(f"\n{'method / config':78s} {'seed':>4s} {'mass pointing':>22s} {'mass hit@0.25':>22s} "
          f"{'calc. pointing':>22s} {'calc. hit@0.25':>22s} {'test AUC':>12s}")
    for r in rows:
        print(_line(r))


def _write(args: argparse.Namespace, manifest: Path, ckpt: Path, rows: list[dict[str, Any]]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": os.uname().nodename, "load": os.getloadavg(),
                                    "threads": torch.get_num_threads(), "manifest": str(manifest),
                                    "checkpoint": str(ckpt), "rows": rows}, indent=1))


def _reused(run_dir: Path, cfg: Any) -> tuple[Any, list[Any]]:
    """A saved sweep run as ``(run, validation losses per epoch)``: its best mapper and its metrics log."""
    from types import SimpleNamespace

    from mammoclip.attribution.mapper import load_mapper

    mapper = load_mapper(run_dir / "best")[0]
    val: list[Any] = []
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        val = [r["val/loss"] for r in map(json.loads, log.read_text().splitlines()) if "val/loss" in r]
    return SimpleNamespace(mapper=mapper, attributes=mapper.attributes), val


def _heatmap_rows(rows: list[dict[str, Any]], overrides: dict[str, Any], seed: int, clip: Any, run: Any,
                  bundle: Any, settings: list[dict[str, Any]], args: argparse.Namespace, best_epoch: int | None,
                  maps: Any, run_dir: Path) -> None:
    """Append one ``factor`` row per heatmap setting of one mapper (and the breast prior once)."""
    from mammoclip.attribution.evaluation import beats

    selected: dict[str, Any] = {}
    if args.select == "auc":
        summary, epochs, aucs = _auc_selected(run_dir, clip, bundle, settings, args.n_boot, maps)
        selected = {"select": "auc", "best_epoch_by_attribute": epochs}
    else:
        summary = _heatmap_sweep(clip, run.mapper, bundle, settings, args.n_boot)
        aucs = {"train_auc": _aucs(run, clip, bundle, "train", maps),
                "test_auc": _aucs(run, clip, bundle, "test", maps)}
    for method in summary["method"].unique():
        sel = summary[summary["method"] == method]
        row: dict[str, Any] = {"config": dict(overrides), "seed": seed, "method": "factor"}
        if method == "breast_prior":
            if any(r["method"] == "breast_prior" for r in rows):
                continue
            row.update(config={}, seed=None, method="breast_prior")
        else:
            k, t = method.split()[1:]
            row["heatmap"] = {"top_k": int(k[2:]), "temperature": float(t[2:])}
            row.update(aucs, **selected, best_epoch=best_epoch, beats_breast_prior={
                a: {m: beats(summary, method, "breast_prior", a, m) for m in ("pointing", "hit@0.25")}
                for a in ("mass", "calcification")})
        for attr in ("mass", "calcification"):
            for metric in ("pointing", "hit@0.25"):
                m = sel[(sel["attribute"] == attr) & (sel["metric"] == metric)]
                if len(m):
                    row[f"{attr} {metric}"] = {k: round(float(m.iloc[0][k]), 3) for k in ("value", "ci_low", "ci_high")}
        rows.append(row)
        print(_line(row), flush=True)


def _line(r: dict[str, Any]) -> str:
    label = r["method"] if r["method"] != "factor" else "factor " + json.dumps(r["config"], sort_keys=True)
    if "heatmap" in r:
        label += f" k={r['heatmap']['top_k']} t={r['heatmap']['temperature']:g}"
    cells = [_fmt(r[k]) if k in r else "-" for k in ("mass pointing", "mass hit@0.25", "calcification pointing",
                                                         "calcification hit@0.25")]
    auc = "/".join(f"{v:.2f}" for v in r.get("test_auc", {}).values()) or "-"
    return f"{label[:78]:78s} {str(r['seed'] or '-'):>4s} " + " ".join(f"{c:>22s}" for c in cells) + f" {auc:>12s}"


if __name__ == "__main__":
    main()
