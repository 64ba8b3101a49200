"""Zero-shot classification with prompt ensembles.

The original scores an image with a softmax over the raw cosine similarities to one two-word prompt
per class, per image only (docs/original.md §6.1). Here each class is a prompt *ensemble*: the prompts
are embedded once, L2-normalised, averaged and renormalised (CLIP's recipe); images are streamed
through a DataLoader; the softmax is over cosine similarities (optionally multiplied by the learnt
logit scale, which sharpens probabilities without changing the ranking); results come per image and
per breast, with patient-bootstrap CIs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammoclip.data.manifest import Bundle, splits_from_hash
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate import distributed as D
from mammoclip.evaluate.features import check_image_size, image_batches, model_device
from mammoclip.evaluate.metrics import DEFAULT_BOOTSTRAP, evaluate_predictions, score_columns
from mammoclip.evaluate.tasks import TaskSpec, get_task, task_labels
from mammoclip.progress import progress_bar

#: Built-in prompt styles of :func:`mammoclip.text.prompts.zero_shot_prompts`.
PROMPT_STYLES: tuple[str, ...] = ("paper", "ensemble")
#: Texts per tokenizer/encoder batch when embedding prompts or reports.
TEXT_BATCH: int = 64


def load_prompts(task: TaskSpec, prompts: str | Path | dict[str, list[str]]) -> dict[str, list[str]]:
    """Class name -> prompts, in label-index order.

    Args:
        task: The task.
        prompts: ``"paper"`` / ``"ensemble"`` (the built-in sets), a JSON file
            ``{"class": ["prompt", ...], ...}`` in label order, or such a dict.

    Raises:
        ConfigError: when the file is missing/invalid or its number of classes is not the task's.
    """
    if isinstance(prompts, dict):
        table = prompts
    elif str(prompts) in PROMPT_STYLES:
        from mammoclip.text.prompts import zero_shot_prompts

        table = zero_shot_prompts(task.prompt_task, str(prompts))
    else:
        path = Path(prompts)
        if not path.exists():
            raise ConfigError(f"--prompts: {prompts!r} is neither a style {PROMPT_STYLES} nor an existing JSON file")
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); expected {{\"class\": [\"prompt\", ...]}}") from err
    if not isinstance(table, dict) or len(table) != len(task.classes):
        raise ConfigError(
            f"prompts for task {task.name!r} must give {len(task.classes)} classes in the order {task.class_names}, "
            f"got {list(table) if isinstance(table, dict) else type(table).__name__}"
        )
    if any(not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v) for v in table.values()):
        raise ConfigError("every class needs a non-empty list of prompt strings")
    return {str(k): list(v) for k, v in table.items()}


@torch.no_grad()
def encode_texts(model: Any, texts: list[str], *, batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """``(N, D)`` L2-normalised text embeddings, batched, model in eval mode."""
    from mammoclip.models import get_tokenizer

    tokenizer = get_tokenizer(model)
    device = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i : i + batch_size])
        out.append(model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device), normalize=True))
    return torch.cat(out).float()  # (N, D)


def encode_text_rows(model: Any, texts: list[str], *, batch_size: int = TEXT_BATCH) -> np.ndarray:
    """``(N, D)`` float32 :func:`encode_texts` of a corpus (reports), model in eval mode, its mode restored.

    Under torchrun each process encodes its share of the texts and every process returns all of them.
    """
    was_training = model.training
    model.eval()
    try:
        return D.sharded(len(texts), lambda rows: {"emb": encode_texts(model, texts[rows.start:rows.stop],
                                                                        batch_size=batch_size).cpu().numpy()},
                         what="text embeddings").get("emb", np.zeros((0, model.embed_dim), np.float32))
    finally:
        model.train(was_training)


@torch.no_grad()
def class_embeddings(model: Any, prompts: dict[str, list[str]]) -> torch.Tensor:
    """``(K, D)`` one unit vector per class: mean of its normalised prompt embeddings, renormalised."""
    texts = [t for ps in prompts.values() for t in ps]
    emb = encode_texts(model, texts)  # (sum_k P_k, D)
    rows, start = [], 0
    for ps in prompts.values():
        rows.append(emb[start : start + len(ps)].mean(dim=0))
        start += len(ps)
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)  # (K, D)


@torch.no_grad()
def zero_shot_probs(
    model: Any,
    bundle: Bundle,
    weights: torch.Tensor,
    *,
    use_logit_scale: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool | None = False,
) -> np.ndarray:
    """``(N, K)`` class probabilities of every manifest row (softmax over cosine similarities).

    Under torchrun each process scores its share of the rows and every process returns all of them.
    """
    was_training = model.training
    model.eval()
    scale = float(model.scale()) if use_logit_scale else 1.0

    def share(rows: range) -> dict[str, np.ndarray]:
        parts = []
        bar = progress_bar(len(rows), "zero-shot", "img", enabled=progress if D.job().is_primary else False)
        try:
            for _, images in image_batches(model, bundle, batch_size=batch_size, num_workers=num_workers,
                                           rows=rows):
                emb = model.encode_image(images, normalize=True).float()  # (B, D)
                sims = scale * emb @ weights.T  # (B, K)
                parts.append(sims.softmax(dim=-1).double().cpu().numpy())
                bar.update(len(images))
        finally:
            bar.close()
        return {"probs": np.concatenate(parts)}

    try:
        merged = D.sharded(len(bundle.images), share, what="zero-shot probabilities")
    finally:
        model.train(was_training)
    return merged.get("probs", np.zeros((0, weights.shape[0]), np.float64))


def _select_split(bundle: Bundle, split: str) -> Bundle:
    if split == "all":
        return bundle
    part = bundle.split(split)
    if len(part.images) == 0:
        raise DataError(f"manifest has no rows with split == {split!r}; choose --split train|val|test|all")
    return part


def run_zeroshot(
    model: Any,
    bundle: Bundle,
    task: str | TaskSpec,
    *,
    prompts: str | Path | dict[str, list[str]] = "ensemble",
    out_dir: str | Path | None = None,
    split: str = "test",
    aggregate: str = "max",
    use_logit_scale: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    n_boot: int = DEFAULT_BOOTSTRAP,
    allow_resize: bool = False,
    model_name: str = "",
    progress: bool | None = False,
) -> dict[str, Any]:
    """Zero-shot evaluation of one task; writes the run directory when ``out_dir`` is given.

    Args:
        model: A :class:`~mammoclip.models.MammoCLIP`.
        bundle: The manifest bundle.
        task: Task name or spec (see :func:`mammoclip.evaluate.tasks.list_tasks`).
        prompts: Prompt style, JSON file or dict (see :func:`load_prompts`).
        out_dir: Run directory for ``results.json``, ``predictions.csv``, ``predictions_breast.csv``,
            the ROC/confusion PNG and ``index.html``.
        split: Manifest split to score (``all`` for every row).
        aggregate: ``max`` or ``mean`` over the views of a breast.
        use_logit_scale: Multiply the similarities by the model's temperature before the softmax.
        n_boot: Bootstrap replicates of the CIs.
        allow_resize: Resize images whose size differs from the model's input instead of failing.

    Returns:
        The results dict (as written to ``results.json``), the same on every rank under torchrun,
        where the images are shared out and rank 0 alone computes the metrics and writes the folder.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    part = _select_split(bundle, split)
    labels = task_labels(part.images, spec, source=f"manifest split {split!r}")
    check_image_size(model, part, allow_resize=allow_resize)
    table = load_prompts(spec, prompts)
    weights = class_embeddings(model, table)
    probs = zero_shot_probs(model, part, weights, use_logit_scale=use_logit_scale, batch_size=batch_size,
                            num_workers=num_workers, progress=progress)
    # metrics and files once, on rank 0, from the merged probabilities; every rank returns its results
    return D.on_primary(lambda: _score_zeroshot(bundle, part, spec, labels, probs, table, prompts=prompts,
                                                out_dir=out_dir, split=split, aggregate=aggregate,
                                                use_logit_scale=use_logit_scale, n_boot=n_boot,
                                                model_name=model_name))


def _score_zeroshot(bundle: Bundle, part: Bundle, spec: TaskSpec, labels: np.ndarray, probs: np.ndarray,
                    table: dict[str, list[str]], *, prompts: str | Path | dict[str, list[str]],
                    out_dir: str | Path | None, split: str, aggregate: str, use_logit_scale: bool, n_boot: int,
                    model_name: str) -> dict[str, Any]:
    """The results of :func:`run_zeroshot` from its ``(N, K)`` probabilities (and its run folder)."""
    cols = score_columns(spec.class_names)
    preds = part.images[["image_id", "patient_id", "study_id", "laterality", "view"]].copy()
    preds["label"] = labels
    preds[cols] = probs
    preds["pred"] = probs.argmax(axis=1)
    labelled = preds[preds["label"] >= 0]
    notes = []
    hashed = split != "all" and splits_from_hash(bundle.images)
    if hashed:
        # The split of a manifest built from a folder or table without one was drawn by patient hash:
        # it means nothing for a model that never trained on this data, yet scoring it alone drops most rows.
        notes.append(f"split {split!r} ({len(part.images)} of {len(bundle.images)} images) was drawn by patient "
                     "hash when the manifest was built, not given by you; use --split all to score every image")
    if labelled["label"].nunique() < 2:
        # not an error: a small validation split may lack positives; AUC-type metrics become NaN (null).
        notes.append(f"split {split!r} has a single class of {spec.column!r}: AUC-type metrics are undefined")
    scored = evaluate_predictions(preds, spec.class_names, aggregate=aggregate, n_boot=n_boot)
    headline = "auc" if spec.binary else "accuracy"
    results: dict[str, Any] = {
        "kind": "zeroshot",
        "task": spec.name,
        "model": model_name,
        "split": split,
        "prompts": "custom" if isinstance(prompts, dict) else str(prompts),
        "prompt_table": table,
        "aggregate": aggregate,
        "use_logit_scale": use_logit_scale,
        "metrics": {"image": scored["image"], "breast": scored["breast"]},
        "split_source": "hash" if hashed else "manifest",
        "counts": {**{k: scored[k] for k in ("n_images", "n_breasts", "n_patients")},
                   "n_per_class": {name: int((labelled["label"] == i).sum())
                                   for i, name in enumerate(spec.class_names)}},
        "notes": notes,
        "summary": {f"image_{headline}": scored["image"][headline]["value"],
                    f"breast_{headline}": scored["breast"][headline]["value"]},
    }
    if out_dir is not None:
        _write_zeroshot_run(Path(out_dir), results, preds, scored["breast_table"], spec)
    return results


def _write_zeroshot_run(out: Path, results: dict[str, Any], preds: pd.DataFrame, breast: pd.DataFrame,
                        spec: TaskSpec) -> None:
    from mammoclip.evaluate.report import (
        PREDICTIONS_FILE,
        plot_confusion,
        plot_roc,
        write_html_report,
        write_results,
    )

    out.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out / PREDICTIONS_FILE, index=False)
    breast.to_csv(out / "predictions_breast.csv", index=False)
    cols = score_columns(spec.class_names)
    lab = preds[preds["label"] >= 0]
    if spec.binary:
        plot_roc({"per image": (lab["label"].to_numpy(), lab[cols[1]].to_numpy(), lab["patient_id"].to_numpy()),
                  "per breast": (breast["label"].to_numpy(), breast[cols[1]].to_numpy(), breast["patient_id"].to_numpy())},
                 out / "roc.png", title=f"zero-shot {spec.name}")
    else:
        plot_confusion(lab["label"].to_numpy(), lab["pred"].to_numpy(), spec.class_names, out / "confusion.png",
                       title=f"zero-shot {spec.name} (per image)")
    write_results(out, results)
    write_html_report(out, results)
