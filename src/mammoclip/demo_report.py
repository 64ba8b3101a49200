"""The demo's HTML report: one self-contained page rendered from ``results.json``.

Every number on the page is read from ``results.json`` (written by the demo run); nothing is typed
in. The test suite parses the page and checks its table against the JSON. Figures are embedded as
data URIs, so the page still shows them when ``index.html`` is copied alone.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mammoclip.errors import DataError
from mammoclip.evaluate.sections import attribution_section_html, detection_section_html, verdict_sentence

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#1d2330;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #dde;padding-bottom:.2em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse;margin:.8em 0} th,td{border:1px solid #ccd;padding:.3em .7em;text-align:right}
th{background:#f1f3f8} td.l,th.l{text-align:left}
figure{display:inline-block;margin:.5em;vertical-align:top} figure img{max-width:520px;border:1px solid #ccd}
figcaption{font-size:.85em;color:#555;max-width:520px}
code{background:#f1f3f8;padding:0 .25em}
.meta{color:#666;font-size:90%} .verdict{margin:.6em 0}
table.overlay-grid img{max-width:200px}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if lo is None or hi is None:
        return "–"
    return f"{lo:.3f}–{hi:.3f}"


def render_demo_html(results: dict[str, Any], out_dir: Path) -> str:
    """Render the demo page.

    Args:
        results: The content of ``results.json`` (see :func:`mammoclip.demo.run_demo`).
        out_dir: The demo folder; figure paths in ``results["figures"]`` are relative to it.

    Returns:
        The HTML text.
    """
    parts: list[str] = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>mammoclip demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>mammoclip demo report</h1>",
        f"<p>mammoclip {html.escape(results.get('version', ''))}, run {html.escape(results.get('finished', ''))}, "
        f"total time {results.get('total_seconds', 0):.0f} s on {html.escape(results.get('machine', ''))}.</p>",
        "<div class='note'><b>What these numbers mean.</b> Everything here was computed on a small "
        "<i>synthetic</i> cohort generated on this machine, with a small CPU model "
        f"(<code>{html.escape(results.get('model', ''))}</code>) pre-trained for "
        f"{_duration(results.get('pretrain', {}).get('seconds'))} on this machine. They show "
        "that the pipeline works end to end and that pre-training teaches the model something measurable; "
        "they say nothing about performance on real mammograms. See README for the paper configurations.</div>",
    ]

    cohort = results.get("cohort", {})
    parts.append("<h2>1. Synthetic cohort</h2>")
    parts.append(
        f"<p>{cohort.get('patients', 0)} patients, {cohort.get('images', 0)} images (CC and MLO of both breasts), "
        f"written as DICOM and preprocessed to {cohort.get('image_size', '')} PNGs "
        f"({cohort.get('failures', 0)} failures).</p>"
    )
    parts.append(_table(
        ["split", "images", "mass", "calcification"],
        [[s, v.get("images"), v.get("mass"), v.get("calcification")] for s, v in cohort.get("splits", {}).items()],
        table_id="cohort-table",
    ))
    parts.extend(_figures(results, ("cohort_grid",), out_dir))

    parts.append("<h2>2. Pre-training</h2>")
    pre = results.get("pretrain", {})
    parts.append(
        f"<p>{pre.get('epochs', 0)} epochs, {pre.get('steps', 0)} steps, validation loss "
        f"{_fmt(pre.get('val_loss_first'))} → {_fmt(pre.get('val_loss_best'))} (best), "
        f"{pre.get('seconds') or 0:.0f} s.</p>"
    )
    parts.extend(_figures(results, ("training_curves",), out_dir))

    parts.append("<h2>3. Results</h2>")
    rows = []
    for row in results.get("table", []):
        rows.append([row["evaluation"], row["task"], row["init"], row.get("fraction"), row["metric"],
                     row["value"], _ci(row)])
    parts.append(_table(["evaluation", "task", "init", "label fraction", "metric", "value", "95% CI"], rows,
                        table_id="results-table", left=(0, 1, 2, 4)))
    parts.append(_results_notes(results.get("table", [])))
    parts.extend(_figures(results, tuple(k for k in results.get("figures", {}) if k not in
                                         ("cohort_grid", "training_curves")), out_dir))
    number = 4
    if "localization" in results:
        parts.extend(_localization(results["localization"], out_dir, number))
        number += 1
    if "attribution" in results:
        parts.extend(_attribution(results["attribution"], out_dir, number))
        number += 1
    parts.append(f"<h2>{number}. Files</h2><ul>")
    for label, rel in results.get("files", {}).items():
        parts.append(f"<li><a href='{html.escape(rel)}'>{html.escape(label)}</a></li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


#: Detection overlays shown per init (the run folder keeps more): the page inlines every image.
_OVERLAYS = 4
#: Detection protocols in table order, as the page names them.
_PROTOCOLS = {"all_images": "all test images (normal ones too)", "positives_only": "images with a mass only (paper)"}


def _localization(loc: dict[str, Any], out_dir: Path, number: int) -> list[str]:
    """The "Localization" section: the headline table from ``results.json``, then each run's own section."""
    parts = [f"<h2>{number}. Localization (detection)</h2>"]
    if "skipped" in loc:
        return parts + [f"<p>Not run on this cohort: {html.escape(str(loc['skipped']))}</p>"]
    settings = loc.get("settings", {})
    det = settings.get("detector", {})
    parts.append(
        f"<p>A RetinaNet ({det.get('fpn_channels')}-channel pyramid, anchors {_fmt(det.get('anchor_scale'))} x stride) "
        f"on the frozen image tower finds <b>{html.escape(str(loc.get('class')))}</b> boxes, once on the pre-trained "
        f"tower and once per baseline initialisation, trained {settings.get('epochs')} epoch(s) on "
        f"{_fmt(settings.get('label_fraction'))} of the training patients (the epoch with the best validation "
        "AP@0.5 kept) and evaluated on the test split. A detection counts when its IoU with a truth box is at "
        "least 0.5; FROC mean: the mean sensitivity at 1/8 to 8 false positives per image.</p>")
    rows = []
    for init, run in loc.get("inits", {}).items():
        for protocol, words in _PROTOCOLS.items():
            m = run.get("protocols", {}).get(protocol, {})
            rows.append([init, words, m.get("ap50", {}).get("value"), _ci(m.get("ap50", {})),
                         m.get("froc_mean", {}).get("value"), _ci(m.get("froc_mean", {}))])
    parts.append(_table(["init", "images", "AP@0.5", "95% CI", "FROC mean sensitivity", "95% CI"], rows,
                        table_id="localization-table", left=(0, 1)))
    for init, run in loc.get("inits", {}).items():
        parts.append(f"<h3>{html.escape(init)} init</h3>")
        parts.append(_run_section(partial(detection_section_html, max_overlays=_OVERLAYS),
                                  out_dir / str(run.get("eval_dir", ""))))
    return parts


def _attribution(attr: dict[str, Any], out_dir: Path, number: int) -> list[str]:
    """The "Attribution" section: FActOR vs baselines and the verdict from ``results.json``, then the run's section."""
    parts = [f"<h2>{number}. Attribution (Mammo-FActOR)</h2>"]
    if "skipped" in attr:
        return parts + [f"<p>Not run on this cohort: {html.escape(str(attr['skipped']))}</p>"]
    parts.append(
        f"<p>A Mammo-FActOR mapper ({attr.get('epochs')} epochs, feature tap {html.escape(str(attr.get('tap')))}) "
        "trained on the pre-trained model's frozen tower turns each attribute's sentences into a heatmap. "
        "It is scored on the test images that show the attribute and have a truth box, with the same regions "
        "and metrics as three baselines: <code>breast_prior</code> (a Gaussian on the breast, no image content), "
        "<code>top_channels</code> (the most active channels, no attribute) and <code>gradcam</code> (Grad-CAM of a "
        "linear probe). Pointing: the heatmap's peak lies in a truth box; hit@0.25: the top region's box overlaps "
        "a truth box with IoU at least 0.25. FActOR localizes only if its interval lies above the breast "
        "prior's.</p>")
    rows = []
    for method, by_attr in attr.get("metrics", {}).items():
        for attribute, m in by_attr.items():
            rows.append([attribute, method, m.get("pointing", {}).get("value"), _ci(m.get("pointing", {})),
                         m.get("hit@0.25", {}).get("value"), _ci(m.get("hit@0.25", {}))])
    rows.sort(key=lambda r: str(r[0]))
    parts.append(_table(["attribute", "method", "pointing", "95% CI", "hit@0.25", "95% CI"], rows,
                        table_id="attribution-table", left=(0, 1)))
    verdicts = attr.get("beats_breast_prior", {})
    parts.append("<div class='note'>" + "<br>".join(
        f"<b>{html.escape(verdict_sentence(a, verdicts.get(a)))}</b>" for a in verdicts) + "</div>")
    parts.append(_run_section(attribution_section_html, out_dir / str(attr.get("eval_dir", ""))))
    return parts


def _run_section(render: Callable[[Path], str], run_dir: Path) -> str:
    """A run's own section (headings one level down, under the demo's); a note when its folder is gone."""
    try:
        fragment = render(run_dir)
    except DataError as err:
        return f"<p class='meta'>Details not shown: {html.escape(str(err))}</p>"
    return fragment.replace("<h3>", "<h4>").replace("</h3>", "</h4>").replace("<h2>", "<h3>").replace("</h2>", "</h3>")


def _table(header: list[str], rows: list[list[Any]], *, table_id: str, left: tuple[int, ...] = (0,)) -> str:
    """An HTML table; columns whose index is in ``left`` are left-aligned (text), the rest numbers."""
    head = "".join(f"<th class='{'l' if i in left else ''}'>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f"<td class='{'l' if i in left else ''}'>{_fmt(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _duration(seconds: Any) -> str:
    """``2570`` -> "43 min (2570 s)", ``95`` -> "95 s"; "an unmeasured time" when missing."""
    if not isinstance(seconds, (int, float)):
        return "an unmeasured time"
    return f"{seconds / 60:.0f} min ({seconds:.0f} s)" if seconds >= 120 else f"{seconds:.0f} s"


def _results_notes(table: list[dict[str, Any]]) -> str:
    """What a reader of the results table would otherwise have to guess, from the rows themselves."""
    notes = ["<b>95% CI</b>: patient-bootstrap percentile intervals (patients resampled with replacement). "
             "Zero-shot rows: the interval of the AUC itself. Linear-probe rows: the value is the mean of the "
             "seeds' test AUCs; the interval is that of the AUC of the seed-averaged test scores (each image's "
             "score averaged over the seeds' heads), which is the same test set seen through the average head."]
    below = [r for r in table if r.get("evaluation") == "zero-shot" and r.get("init") == "imagenet"
             and isinstance(r.get("value"), (int, float)) and r["value"] < 0.5]
    if below:
        which = ", ".join(f"{html.escape(str(r['task']))} {html.escape(str(r['metric']))} {r['value']:.3f}"
                          for r in below)
        notes.append(f"<b>ImageNet zero-shot below 0.5</b> ({which}): the ImageNet-initialised model has never "
                     "seen an image paired with a report; its projection heads are random, so its zero-shot scores "
                     "are chance, and chance on a small test split lands on either side of 0.5 (the intervals "
                     "include 0.5). It is the floor the pre-trained model is compared with, not a reversed signal.")
    levels: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in table:
        if r.get("evaluation") == "zero-shot":
            metric = str(r.get("metric"))
            level = "image" if "per image" in metric else "breast" if "per breast" in metric else None
            if level:
                levels.setdefault((r.get("task"), r.get("init")), {})[level] = (r.get("value"), r.get("ci_low"))
    pairs = [v for v in levels.values() if len(v) == 2]
    if pairs and all(v["image"] == v["breast"] for v in pairs):
        notes.append("<b>Per-image and per-breast rows are identical</b>: every breast in this data set has a single "
                     "image (one view), and a breast's score aggregates its views, so one view is its own breast score.")
    return "<div class='note'>" + "<br>".join(notes) + "</div>"


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else f"image/{path.suffix.lower().lstrip('.') or 'png'}"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figures(results: dict[str, Any], keys: tuple[str, ...], out_dir: Path | None = None) -> list[str]:
    """``<figure>`` tags, each image inlined as a data URI (a relative link when the file is not there)."""
    out = []
    for key in keys:
        fig = results.get("figures", {}).get(key)
        if fig:
            src = (_data_uri(Path(out_dir) / fig["path"]) if out_dir is not None else None) or fig["path"]
            out.append(f"<figure><img src='{html.escape(src)}' alt='{html.escape(key)}'>"
                       f"<figcaption>{html.escape(fig.get('caption', ''))}</figcaption></figure>")
    return out


def write_demo_html(results_path: Path) -> Path:
    """Render ``index.html`` beside ``results.json``."""
    results = json.loads(Path(results_path).read_text())
    out = Path(results_path).with_name("index.html")
    out.write_text(render_demo_html(results, out.parent), encoding="utf-8")
    return out
