"""One weak-localization run: FActOR and its baselines on the same images, with the same metrics.

Writes ``localization.csv`` (one row per method, attribute and image), ``summary.csv`` (means with
patient-bootstrap CIs) and ``results.json`` (the same numbers, the settings, and for each attribute
whether FActOR beats the breast prior with non-overlapping 95% CIs; a method that does not is not
localizing anything, docs/attribution.md), an overlay grid per attribute under ``overlays/`` (a few
scored images, one column per method, so that a reader sees *what* each number scored) and
``index.html`` (:func:`mammoclip.evaluate.sections.attribution_section_html` as a page).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mammoclip.attribution.baselines import fit_probe_heads
from mammoclip.attribution.heatmap import DEFAULT_TOP_K, Explainer, HeatmapContext, get_heatmap_method
from mammoclip.attribution.localization import localization_table, summarize
from mammoclip.attribution.mapper import FactorMapper, load_mapper
from mammoclip.attribution.outputs import localization_overlays
from mammoclip.data.manifest import Bundle
from mammoclip.errors import DataError
from mammoclip.evaluate.metrics import DEFAULT_BOOTSTRAP
from mammoclip.evaluate.report import write_results
from mammoclip.evaluate.sections import attribution_section_html, write_section_page

#: The metrics on which FActOR must beat the breast prior (the issue's quality bar).
VERDICT_METRICS: tuple[str, ...] = ("pointing", "hit@0.25")
#: Images per attribute drawn into the overlay grids of ``out_dir/overlays/``.
DEFAULT_OVERLAYS: int = 4


def beats(summary: pd.DataFrame, method: str, baseline: str, attribute: str, metric: str) -> bool | None:
    """True when ``method``'s CI lies wholly above ``baseline``'s (None when either is missing)."""
    sel = summary[(summary["attribute"] == attribute) & (summary["metric"] == metric)].set_index("method")
    if method not in sel.index or baseline not in sel.index:
        return None
    return bool(sel.loc[method, "ci_low"] > sel.loc[baseline, "ci_high"])


def evaluate_localization(
    model: Any, mapper: FactorMapper | str | Path, bundle: Bundle, *, split: str = "test",
    baselines: Sequence[str] = ("top_channels", "breast_prior", "gradcam"), probe_split: str = "train",
    top_k: int = DEFAULT_TOP_K, n_boot: int = DEFAULT_BOOTSTRAP, batch_size: int = 8, num_workers: int = 0,
    out_dir: str | Path | None = None, progress: bool | None = False, overlays: int = DEFAULT_OVERLAYS,
) -> dict[str, Any]:
    """Score FActOR and ``baselines`` on the boxed positive images of ``split``.

    Args:
        out_dir: Write ``localization.csv``, ``summary.csv``, ``results.json``, the overlay grids
            (``overlays/``) and ``index.html`` (the attribution section as a page) there.
        overlays: Images per attribute in the overlay grids (one row each, one column per method;
            0: no grids). Spread over patients: one image per patient before a second one.

    Returns:
        ``{"summary": {"<method> <attribute> <metric>": value}, "metrics": [...], "beats_breast_prior": ...}``.
    """
    started = time.time()
    if not isinstance(mapper, FactorMapper):
        mapper = load_mapper(mapper)[0]
    mapper = mapper.to(next(model.parameters()).device)
    for name in baselines:
        get_heatmap_method(name)
    test = bundle if split == "all" else bundle.split(split)
    if len(test.images) == 0:
        raise DataError(f"the manifest has no images in split {split!r}")
    names = mapper.names
    heads = None
    if "gradcam" in baselines:
        heads = fit_probe_heads(model, bundle.split(probe_split), mapper.attributes, batch_size=batch_size,
                                num_workers=num_workers)
    explainers = {"factor": Explainer(model, "factor", HeatmapContext(names, mapper=mapper, top_k=top_k))}
    for name in baselines:
        explainers[name] = Explainer(model, name, HeatmapContext(names, top_k=top_k, probe_heads=heads, tap=mapper.tap))
    table = localization_table(explainers, test, mapper.attributes, batch_size=batch_size, num_workers=num_workers,
                               progress=progress)
    if table.empty:
        raise DataError(f"split {split!r} has no positive image with a truth box for {names}")
    summary = summarize(table, n_boot=n_boot)
    verdict = {a: {m: beats(summary, "factor", "breast_prior", a, m) for m in VERDICT_METRICS}
               for a in summary["attribute"].unique()}
    results = {
        "kind": "factor-localization", "split": split, "methods": list(explainers), "attributes": names,
        "top_k": top_k, "tap": mapper.tap, "n_boot": n_boot, "probe_split": probe_split if heads else None,
        "metrics": summary.to_dict(orient="records"), "beats_breast_prior": verdict,
        "summary": {f"{r.method} {r.attribute} {r.metric}": float(r.value) for r in summary.itertuples()
                    if r.metric in ("hit@0.25", "hit@0.5", "pointing")},
        "seconds": round(time.time() - started, 1),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "localization.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        if overlays > 0:
            results["overlays"] = localization_overlays(explainers, test, mapper.attributes, table, out, overlays,
                                                        batch_size=batch_size, num_workers=num_workers)
        write_results(out, results)  # NaN (energy without masks) -> null: strict JSON
        write_section_page(out, f"mammoclip factor eval: {split}", attribution_section_html(out))
    return results
