"""Evaluation outputs people look at: ``results.json``, ``predictions.csv``, PNG plots, ``index.html``.

Every evaluation command writes a run directory with the same layout (docs/architecture.md, "Outputs"):

* ``results.json`` -- the metrics (with 95% CIs) and a flat ``summary`` dict of headline numbers
  that :func:`compare_runs` puts side by side;
* ``predictions.csv`` (+ ``predictions_breast.csv``) -- one row per image (per breast);
* ``*.png`` -- ROC curves with bootstrap bands, data-efficiency curves, confusion matrices;
* ``index.html`` -- a self-contained page (plots embedded as data URIs) that shows all of it.

matplotlib is imported lazily (the ``viz`` extra) and always with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.errors import DataError
from mammoclip.evaluate.metrics import DEFAULT_SPECIFICITY, roc_band

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.csv"
INDEX_FILE = "index.html"


def _pyplot():  # noqa: ANN202 - returns the matplotlib.pyplot module
    try:
        import matplotlib
    except ImportError as err:
        from mammoclip.errors import ConfigError

        raise ConfigError("plots need matplotlib: pip install 'mammoclip[viz]'") from err

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, pd.DataFrame)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(out_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results.json`` (NaN becomes null, tables are dropped)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(_jsonable(results), indent=2), encoding="utf-8")
    return path


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """Read a run directory's ``results.json``.

    Raises:
        DataError: when the folder is not a run directory.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        raise DataError(f"{run_dir}: not a run directory (no {RESULTS_FILE}); pass folders written by "
                        "`mammoclip zeroshot|probe|finetune|retrieval --out DIR`")
    return json.loads(path.read_text(encoding="utf-8"))


# --- words for keys ----------------------------------------------------------------------------------

#: Metric keys as a reader says them (plot axes, table headers). ``sensitivity_at_spec`` is filled in
#: by :func:`metric_label` with the specificity it was measured at.
METRIC_LABELS: dict[str, str] = {
    "auc": "AUC",
    "auprc": "AUPRC (average precision)",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity_at_spec": "sensitivity at {spec:g} % specificity",
    "ece": "calibration error (ECE)",
    "loss": "loss",
}
#: Prefixes of run-table and training-log keys (``test_auc``, ``val/loss``, ``zeroshot/mass/image_auc``).
_SCOPES: dict[str, str] = {"test": "test", "val": "validation", "train": "training", "image": "per image",
                           "breast": "per breast"}


def metric_label(key: str, specificity: float = DEFAULT_SPECIFICITY) -> str:
    """A metric key in words: ``test_auc`` -> "test AUC", ``zeroshot/mass/image_auc`` -> "mass AUC (per image)",
    ``val/loss`` -> "validation loss", ``sensitivity_at_spec`` -> "sensitivity at 90 % specificity"; an unknown
    key comes back with its ``_`` and ``/`` as spaces."""
    *prefix, name = key.removeprefix("zeroshot/").split("/")
    words = [_SCOPES.get(p, p.replace("_", " ")) for p in prefix]
    level = ""
    head, _, rest = name.partition("_")
    if head in ("test", "val", "train") and rest:
        words.append(_SCOPES[head])
        name = rest
        head, _, rest = name.partition("_")
    if head in ("image", "breast") and rest:
        level, name = _SCOPES[head], rest
    words.append(METRIC_LABELS[name].format(spec=round(100 * specificity, 6)) if name in METRIC_LABELS
                 else name.replace("_", " "))
    text = " ".join(w for w in words if w)
    return f"{text} ({level})" if level else text


# --- plots -------------------------------------------------------------------------------------------


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    title: str = "ROC",
    n_boot: int = 200,
) -> Path:
    """ROC curves with pointwise 95% patient-bootstrap bands.

    Args:
        curves: ``label -> (y_true, y_score, patient_groups)`` (one curve per entry, e.g. per
            image and per breast).
        path: PNG to write.
        title: Plot title.
        n_boot: Replicates for the bands.
    """
    from sklearn.metrics import roc_auc_score

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5.6), dpi=100)
    for name, (y, s, g) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        band = roc_band(y, s, g, n_boot=n_boot)
        line = ax.plot(band["fpr"], band["tpr"], label=f"{name} (AUC {roc_auc_score(y, s):.3f})")[0]
        ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color=line.get_color(), alpha=0.2,
                        label=f"{name}: 95% CI (patient bootstrap)")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    # Below the axes: a curve of a weak model runs through the lower right, where a legend would sit.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, ncol=2, frameon=False)
    return _save(fig, path)


def plot_data_efficiency(table: pd.DataFrame, metric: str, path: str | Path, *, title: str = "") -> Path:
    """Metric vs label fraction, one line per init, mean +- sd over seeds.

    Args:
        table: Rows with ``init``, ``fraction``, ``seed`` and the ``metric`` column.
        metric: Column to plot (e.g. ``test_auc``).
        path: PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4), dpi=100)
    n_seeds = int(table.groupby(["init", "fraction"]).size().max()) if len(table) else 0
    for init, part in table.groupby("init", sort=True):
        stats = part.groupby("fraction")[metric].agg(["mean", "std"]).fillna(0.0).sort_index()
        x = stats.index.to_numpy(dtype=float) * 100
        ax.errorbar(x, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=str(init))
    ax.set_xscale("log")
    ticks = sorted(table["fraction"].unique() * 100)
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    words = metric_label(metric)
    ax.set(xlabel="labelled training patients (%)", ylabel=f"{words} (mean over seeds)",
           title=title or f"data efficiency ({words})")
    ax.grid(alpha=0.3)
    # Outside the axes, so that it never hides a point; the title says what the error bars are.
    ax.legend(title=f"init\n(error bars: ±1 sd\nover {n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=8,
              title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: str | Path,
                   *, title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps a legend placed outside the axes
    fig.clf()
    _pyplot().close(fig)
    return path


# --- HTML --------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px}
img{max-width:560px;border:1px solid #ddd}.meta{color:#666;font-size:90%}"""


def png_data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, so that a page still shows it when ``index.html`` is copied alone."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_page(title: str, body: str) -> str:
    """A whole self-contained page (this module's style) around an HTML ``body`` fragment."""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>")


def _img_tag(path: Path) -> str:
    return f'<figure><img alt="{html.escape(path.name)}" src="{png_data_uri(path)}"><figcaption>{html.escape(path.stem)}</figcaption></figure>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.3f}"
    if v is None:
        return "–"
    return html.escape(str(v))


def identical_levels_note(metrics: dict[str, dict[str, Any]]) -> str:
    """A sentence when the per-image and per-breast rows hold the same numbers, else ``""``.

    That happens when every breast has a single image (a single-view data set): the per-breast score
    aggregates the views of a breast, and one view aggregates to itself. Without the note the two
    identical rows look like a bug.
    """
    pairs = [(a, a.replace("image", "breast")) for a in metrics if "image" in a and a.replace("image", "breast") in metrics]

    def values(level: str) -> list[Any]:
        return [(e.get("value") if isinstance(e, dict) else e) for _, e in sorted(metrics[level].items())]

    same = [a for a, b in pairs if metrics[a] and values(a) == values(b)]
    if not same:
        return ""
    return ("<p class=meta>The per-image and per-breast rows are identical: every breast here has one image "
            "(a single-view data set), and a breast's score aggregates its views, so one view is its own "
            "breast score.</p>")


def metrics_table(metrics: dict[str, dict[str, Any]], specificity: float = DEFAULT_SPECIFICITY) -> str:
    """HTML table of ``{level: {metric: {value, ci_low, ci_high}}}`` as ``value [low, high]``; headers in
    words (``sensitivity_at_spec`` names its specificity)."""
    names = sorted({m for level in metrics.values() for m in level})
    rows = ["<tr><th>level</th>" + "".join(f"<th>{html.escape(metric_label(n, specificity))}</th>" for n in names)
            + "</tr>"]
    for level, vals in metrics.items():
        cells = []
        for n in names:
            e = vals.get(n)
            if isinstance(e, dict):
                cells.append(f"<td>{_fmt(e.get('value'))} <span class=meta>[{_fmt(e.get('ci_low'))}, {_fmt(e.get('ci_high'))}]</span></td>")
            else:
                cells.append(f"<td>{_fmt(e)}</td>")
        rows.append(f"<tr><td>{html.escape(level)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>" + identical_levels_note(metrics)


def frame_table(df: pd.DataFrame) -> str:
    """HTML table of a small DataFrame with floats to 3 decimals."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(out_dir: str | Path, results: dict[str, Any], *, title: str | None = None,
                      tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write ``index.html`` for one run: header, metrics with CIs, extra tables, every PNG of the run.

    Args:
        out_dir: The run directory (its ``*.png`` are embedded).
        results: The run's results (``metrics`` as ``{level: {metric: estimate}}`` and/or ``summary``).
        title: Page title (default: kind and task of the run).
        tables: Further tables to show (e.g. the data-efficiency table), by heading.
    """
    out = Path(out_dir)
    title = title or f"mammoclip {results.get('kind', 'evaluation')}: {results.get('task', '')}"
    meta = {k: results[k] for k in ("kind", "task", "model", "manifest", "split", "prompts", "aggregate") if k in results}
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p class=meta>" + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>"]
    if isinstance(results.get("metrics"), dict) and results["metrics"]:
        parts += ["<h2>Metrics (95% patient-bootstrap CI)</h2>",
                  metrics_table(results["metrics"], float(results.get("specificity", DEFAULT_SPECIFICITY)))]
    if results.get("summary"):
        parts += ["<h2>Summary</h2>", frame_table(pd.DataFrame([results["summary"]]))]
    for heading, df in (tables or {}).items():
        parts += [f"<h2>{html.escape(heading)}</h2>", frame_table(df)]
    pngs = sorted(out.glob("*.png"))
    if pngs:
        parts += ["<h2>Plots</h2>", "".join(_img_tag(p) for p in pngs)]
    parts.append("</body></html>")
    path = out / INDEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def compare_runs(run_dirs: Sequence[str | Path]) -> str:
    """One HTML page that puts several runs side by side (``mammoclip report RUN_DIR...``).

    The table has one row per run and one column per key of the runs' ``summary`` dicts; below it,
    each run's plots.

    Raises:
        DataError: when a folder is not a run directory.
    """
    runs = [(Path(d), read_results(d)) for d in run_dirs]
    rows = []
    for d, res in runs:
        row: dict[str, Any] = {"run": d.name, "kind": res.get("kind"), "task": res.get("task"), "model": res.get("model")}
        row.update(res.get("summary", {}))
        rows.append(row)
    table = pd.DataFrame(rows)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>mammoclip runs</title><style>{_CSS}</style></head><body>",
             f"<h1>Comparison of {len(runs)} run(s)</h1>", frame_table(table)]
    for d, res in runs:
        parts.append(f"<h2>{html.escape(d.name)} <span class=meta>({html.escape(str(res.get('kind')))}, {html.escape(str(res.get('task')))})</span></h2>")
        if isinstance(res.get("metrics"), dict) and res["metrics"]:
            parts.append(metrics_table(res["metrics"]))
        parts.append("".join(_img_tag(p) for p in sorted(d.glob("*.png"))))
    parts.append("</body></html>")
    return "\n".join(parts)
