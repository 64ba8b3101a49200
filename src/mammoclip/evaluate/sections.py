"""HTML sections of detection and FActOR localization runs, read from the run directory alone.

``mammoclip detect eval`` and ``mammoclip factor eval`` write ``results.json`` and their pictures;
these functions turn such a folder into an HTML ``<section>`` (tables with 95% CIs, plots and overlays
embedded as data URIs). They read files only, because ``evaluate`` may import neither ``detect`` nor
``attribution`` (docs/architecture.md): the same fragment goes into the run's own ``index.html``
(:func:`write_section_page`) and into any page that gathers several runs, such as the demo's report.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mammoclip.errors import DataError
from mammoclip.evaluate.report import INDEX_FILE, RESULTS_FILE, html_page, png_data_uri
from mammoclip.text.prompts import read_json_object

#: ``results.json`` marks of the two kinds of run (``task`` of a detection run, ``kind`` of a FActOR run).
DETECTION_TASK = "detect-eval"
LOCALIZATION_KIND = "factor-localization"
#: Detection protocols in report order, with what they count.
DETECTION_PROTOCOLS: dict[str, str] = {
    "all_images": "all images (normal ones too)",
    "positives_only": "images with a box of the class only (the paper's protocol)",
}
#: Localization metrics in report order, as a reader says them.
LOCALIZATION_METRICS: dict[str, str] = {
    "pointing": "pointing game",
    "hit@0.25": "hit rate, IoU ≥ 0.25",
    "hit@0.5": "hit rate, IoU ≥ 0.5",
    "energy": "mask energy",
}
#: The baseline a localization method has to beat (docs/attribution.md §4).
PRIOR = "breast_prior"


def _num(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return f"{float(v):.3f}"
    return "–"


def _estimate(e: Any) -> str:
    """``value [low, high]`` of an estimate dict (``–`` for a missing or undefined number)."""
    if not isinstance(e, dict):
        return _num(e)
    return f"{_num(e.get('value'))} <span class=meta>[{_num(e.get('ci_low'))}, {_num(e.get('ci_high'))}]</span>"


def _figure(run_dir: Path, rel: str, caption: str) -> str:
    path = run_dir / rel
    if not path.is_file():
        return f"<p class=meta>{html.escape(rel)}: listed in {RESULTS_FILE} but missing</p>"
    return (f'<figure><img alt="{html.escape(rel)}" src="{png_data_uri(path)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _load(run_dir: Path, key: str, expected: str, command: str) -> dict[str, Any]:
    """``results.json`` of ``run_dir`` when its ``key`` is ``expected``; a one-line DataError otherwise."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing; pass a folder written by `{command} --out DIR`")
    results = read_json_object(path, "results file", f"(the results of `{command}`)")
    if results.get(key) != expected:
        raise DataError(f"{path}: not a {command} run ({key} is {results.get(key)!r}, expected {expected!r})")
    return results


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str) -> str:
    """An HTML table from already escaped cells (the first column is the row label)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class={cls}><tr>{head}</tr>{body}</table>"


# --- detection ---------------------------------------------------------------------------------------


def _detection_metric_names(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, words) of the metrics of one class, FROC points in the order results.json holds them."""
    keys = [k for p in DETECTION_PROTOCOLS for k in entry.get(p, {})]
    froc = list(dict.fromkeys(k for k in keys if k.startswith("froc@")))
    names = [("ap50", "VOC AP@0.5"), ("coco_ap", "COCO AP (IoU 0.5:0.95)"),
             ("froc_mean", "FROC mean sensitivity" + (f" ({froc[0][5:]}–{froc[-1][5:]} FP/image)" if froc else ""))]
    return names + [(k, f"sensitivity at {k[5:]} FP/image") for k in froc]


def detection_section_html(run_dir: Path, *, max_overlays: int = 8) -> str:
    """The detection section of a ``mammoclip detect eval`` run: metrics with CIs, FROC and PR plots, overlays.

    One table per class, one row per metric (VOC AP@0.5, COCO AP, FROC mean and the sensitivity at each
    false-positive rate), one column per protocol; each cell is ``value [95% CI]`` from ``results.json``.

    Args:
        run_dir: The folder ``evaluate_detector(out_dir=...)`` wrote.
        max_overlays: The most overlay images shown (the run lists them findings first).

    Raises:
        DataError: ``results.json`` is missing, unreadable or not a detection evaluation.
    """
    run_dir = Path(run_dir)
    res = _load(run_dir, "task", DETECTION_TASK, "mammoclip detect eval")
    classes = res.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise DataError(f"{run_dir / RESULTS_FILE}: a detection run without per-class results ('classes')")
    n_boot = res.get("n_boot")
    parts = ["<section class=detection>", "<h2>Detection</h2>",
             f"<p class=meta>split: {html.escape(str(res.get('split')))} · 95% CIs from {html.escape(str(n_boot))} "
             "patient-bootstrap replicates · a detection is a hit at IoU ≥ 0.5 (COCO AP averages IoU 0.5 to 0.95)</p>"]
    for name, entry in classes.items():
        parts.append(f"<h3>{html.escape(str(name))}</h3>")
        parts.append(f"<p class=meta>{entry.get('n_images', '?')} images, {entry.get('n_positive_images', '?')} with "
                     f"a {html.escape(str(name))} box, {entry.get('n_boxes', '?')} boxes</p>")
        header = ["metric", *(f"{html.escape(p)}<br><span class=meta>{html.escape(w)}</span>"
                              for p, w in DETECTION_PROTOCOLS.items())]
        rows = [[html.escape(words), *(_estimate(entry.get(p, {}).get(key)) for p in DETECTION_PROTOCOLS)]
                for key, words in _detection_metric_names(entry)]
        parts.append(_table(header, rows, "detection-metrics"))
    plots = res.get("plots") or [p for p in ("froc.png", "pr.png") if (run_dir / p).is_file()]
    if plots:
        captions = {"froc.png": "FROC: sensitivity vs false positives per image (all images)",
                    "pr.png": "precision-recall at IoU 0.5"}
        parts += ["<h3>Curves</h3>", "".join(_figure(run_dir, p, captions.get(p, p)) for p in plots)]
    overlays = list(res.get("overlays") or [])
    if overlays and max_overlays > 0:
        shown = overlays[:max_overlays]
        more = f"; {len(overlays) - len(shown)} more in overlays/" if len(overlays) > len(shown) else ""
        parts += ["<h3>Overlays</h3>",
                  f"<p class=meta>truth boxes in green, the top detections in red with their scores{more}</p>",
                  "".join(_figure(run_dir, p, Path(p).stem) for p in shown)]
    parts.append("</section>")
    return "\n".join(parts)


# --- FActOR localization -----------------------------------------------------------------------------


def verdict_sentence(attribute: str, verdict: dict[str, bool | None] | None) -> str:
    """The ``beats_breast_prior`` entry of one attribute in plain words.

    FActOR beats the prior only when its 95% CI lies above the prior's on every verdict metric; on any
    other outcome the heatmaps are not shown to localize anything (docs/attribution.md §4).
    """
    verdict = verdict or {}
    won = [m for m, v in verdict.items() if v is True]
    lost = [m for m, v in verdict.items() if v is False]
    if not verdict or any(v is None for v in verdict.values()):
        return f"{attribute}: no verdict (the run has no {PRIOR} baseline to compare with)"
    if not lost:
        return f"{attribute}: FActOR beats the breast prior ({', '.join(won)}: 95% CI above the prior's)"
    above = f"above the prior's on {', '.join(won)} but not on " if won else "not above the prior's on "
    return (f"{attribute}: FActOR does NOT beat the breast prior: not localizing "
            f"(its 95% CI is {above}{', '.join(lost)})")


def _overlay_grid(run_dir: Path, grid: dict[str, Any], max_tiles: int) -> str:
    methods = [str(m) for m in grid.get("methods", [])]
    rows = list(grid.get("rows", []))
    if not methods or not rows:
        return ""
    keep = rows[:max(1, max_tiles // len(methods))]
    body = []
    for row in keep:
        cells = [f"{html.escape(str(row.get('image_id')))}<br><span class=meta>patient "
                 f"{html.escape(str(row.get('patient_id')))}</span>"]
        for m in methods:
            rel = row.get("tiles", {}).get(m)
            path = run_dir / rel if rel else None
            cells.append(f'<img alt="{html.escape(rel)}" src="{png_data_uri(path)}">' if path and path.is_file()
                         else "–")
        body.append(cells)
    more = f"; {len(rows) - len(keep)} more image(s) in overlays/" if len(rows) > len(keep) else ""
    note = (f"<p class=meta>colour: the heatmap (red high); green: truth boxes; white box: the top region; "
            f"cross: the heatmap's peak{more}</p>")
    return _table(["image", *map(html.escape, methods)], body, "overlay-grid") + note


def attribution_section_html(run_dir: Path, *, max_overlays: int = 12) -> str:
    """The attribution section of a ``mammoclip factor eval`` run: metrics, verdict, overlay grids.

    Per attribute: a table with one row per method (FActOR and the baselines) and one column per
    metric (pointing, hit@0.25, hit@0.5, energy; ``value [95% CI]``), the verdict against the breast
    prior in words, and the overlay grid (one row per image, one column per method).

    Args:
        run_dir: The folder ``evaluate_localization(out_dir=...)`` wrote.
        max_overlays: The most overlay tiles shown per attribute, in whole rows (at least one row).

    Raises:
        DataError: ``results.json`` is missing, unreadable or not a FActOR localization run.
    """
    run_dir = Path(run_dir)
    res = _load(run_dir, "kind", LOCALIZATION_KIND, "mammoclip factor eval")
    records = res.get("metrics")
    if not isinstance(records, list):
        raise DataError(f"{run_dir / RESULTS_FILE}: a localization run without its 'metrics' records")
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # attribute -> method -> metric -> estimate
    for r in records:
        table.setdefault(str(r["attribute"]), {}).setdefault(str(r["method"]), {})[str(r["metric"])] = r
    grids = {str(g.get("attribute")): g for g in res.get("overlays") or [] if isinstance(g, dict)}
    verdicts = res.get("beats_breast_prior") or {}
    parts = ["<section class=attribution>", "<h2>Attribution (FActOR weak localization)</h2>",
             f"<p class=meta>split: {html.escape(str(res.get('split')))} · feature tap: "
             f"{html.escape(str(res.get('tap')))} · top-k channels: {html.escape(str(res.get('top_k')))} · "
             f"95% CIs from {html.escape(str(res.get('n_boot')))} patient-bootstrap replicates · scored on the "
             "images that show the attribute and have a truth box</p>"]
    for attribute in [str(a) for a in res.get("attributes", [])] or list(table):
        parts.append(f"<h3>{html.escape(attribute)}</h3>")
        methods = table.get(attribute)
        if not methods:
            parts.append("<p>no image of the split shows this attribute with a truth box: not scored</p>")
            continue
        first = next(iter(next(iter(methods.values())).values()))
        parts.append(f"<p class=meta>{first.get('n_images')} images of {first.get('n_patients')} patients</p>")
        header = ["method", *(f"{html.escape(w)}<br><span class=meta>{html.escape(k)}</span>"
                              for k, w in LOCALIZATION_METRICS.items())]
        rows = [[html.escape(m), *(_estimate(vals.get(k)) for k in LOCALIZATION_METRICS)] for m, vals in methods.items()]
        parts.append(_table(header, rows, "localization-metrics"))
        sentence = verdict_sentence(attribute, verdicts.get(attribute))
        parts.append(f"<p class=verdict><b>{html.escape(sentence)}</b></p>")
        if attribute in grids and max_overlays > 0:
            parts.append(_overlay_grid(run_dir, grids[attribute], max_overlays))
    parts.append("</section>")
    return "\n".join(parts)


def write_section_page(run_dir: Path, title: str, section: str) -> Path:
    """Write ``run_dir/index.html``: one self-contained page around a section of this module."""
    path = Path(run_dir) / INDEX_FILE
    path.write_text(html_page(title, section), encoding="utf-8")
    return path
