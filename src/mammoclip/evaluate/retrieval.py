"""Image <-> report retrieval Recall@K on a held-out split.

A study's report describes all of its images (typically 4: two breasts x CC/MLO), so the gallery of
texts is the set of distinct reports of the split, and:

* image -> text: a hit when the image's own report is among the K most similar reports;
* text -> image: a hit when any image of the report's study is among the K most similar images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.data.manifest import Bundle
from mammoclip.errors import DataError
from mammoclip.evaluate import distributed as D
from mammoclip.evaluate.features import check_image_size, extract_features
from mammoclip.evaluate.zeroshot import encode_text_rows

#: K values reported.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def report_texts(bundle: Bundle) -> pd.Series:
    """``report_id -> text`` of the bundle's reports (``text``, else findings + impression)."""
    reports = bundle.reports
    if len(reports) == 0:
        raise DataError("retrieval needs reports: put reports.csv beside the manifest and a report_id column in it")
    text = reports["text"].fillna("").astype(str)
    fallback = (reports["findings"].fillna("").astype(str) + " " + reports["impression"].fillna("").astype(str)).str.strip()
    text = text.where(text.str.strip() != "", fallback)
    return pd.Series(text.to_numpy(), index=reports["report_id"].astype(str))


def recall_at_k(sims: np.ndarray, positives: list[set[int]], ks: Sequence[int]) -> dict[str, float]:
    """Share of queries with at least one positive among the top K (rows of ``sims`` are queries).

    Args:
        sims: ``(Q, G)`` similarities of every query to every gallery item.
        positives: For each query, the gallery indices that count as correct.
        ks: The K values.
    """
    order = np.argsort(-sims, axis=1)
    out = {}
    for k in ks:
        top = order[:, :k]
        out[f"R@{k}"] = float(np.mean([bool(positives[q] & set(top[q].tolist())) for q in range(len(positives))]))
    return out


def run_retrieval(
    model: Any,
    bundle: Bundle,
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    allow_resize: bool = False,
    model_name: str = "",
    progress: bool | None = False,
) -> dict[str, Any]:
    """Image->text and text->image Recall@K on one split; writes ``results.json``/``index.html``.

    Returns:
        The results dict with ``metrics = {"image_to_text": {...}, "text_to_image": {...}}``, the same on
        every rank under torchrun (the images and reports are shared out; rank 0 scores and writes).
    """
    part = bundle.split(split) if split != "all" else bundle
    images = part.images
    if "report_id" not in images.columns or images["report_id"].isna().all():
        raise DataError(f"split {split!r} has no report_id column/values; retrieval pairs images with reports")
    images = images[images["report_id"].notna()].reset_index(drop=True)
    texts = report_texts(bundle)
    missing = sorted(set(images["report_id"].astype(str)) - set(texts.index))
    if missing:
        raise DataError(f"report ids {missing[:5]} of the manifest are not in reports.csv")
    part = Bundle(images, part.boxes, part.reports, part.root)
    check_image_size(model, part, allow_resize=allow_resize)
    report_ids = list(dict.fromkeys(images["report_id"].astype(str)))
    img = extract_features(model, part, kinds=("projected",), batch_size=batch_size, num_workers=num_workers,
                           progress=progress)["projected"]  # (N, D)
    txt = encode_text_rows(model, [texts[r] for r in report_ids])  # (R, D)
    return D.on_primary(lambda: _score_retrieval(img, txt, images, report_ids, ks, split=split, out_dir=out_dir,
                                                 model_name=model_name))


def _score_retrieval(img: np.ndarray, txt: np.ndarray, images: pd.DataFrame, report_ids: list[str],
                     ks: Sequence[int], *, split: str, out_dir: str | Path | None, model_name: str) -> dict[str, Any]:
    """The results of :func:`run_retrieval` from the merged embeddings (and its run folder)."""
    sims = img @ txt.T  # (N, R)
    pos_of_report = {r: i for i, r in enumerate(report_ids)}
    img_report = images["report_id"].astype(str).map(pos_of_report).to_numpy()
    i2t = recall_at_k(sims, [{int(j)} for j in img_report], ks)
    t2i = recall_at_k(sims.T, [set(np.flatnonzero(img_report == r).tolist()) for r in range(len(report_ids))], ks)
    results: dict[str, Any] = {
        "kind": "retrieval",
        "task": "image-report",
        "model": model_name,
        "split": split,
        "counts": {"n_images": len(images), "n_reports": len(report_ids)},
        "metrics": {"image_to_text": i2t, "text_to_image": t2i},
        "summary": {**{f"i2t {k}": v for k, v in i2t.items()}, **{f"t2i {k}": v for k, v in t2i.items()}},
    }
    if out_dir is not None:
        from mammoclip.evaluate.report import write_html_report, write_results

        write_results(out_dir, results)
        write_html_report(out_dir, results)
    return results


def chance_recall(n_gallery: int, k: int) -> float:
    """Recall@K of a random ranking with one positive: ``min(k, n) / n``."""
    return float(min(k, n_gallery) / n_gallery) if n_gallery else float("nan")

