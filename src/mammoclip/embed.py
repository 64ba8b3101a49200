"""Embedding export and nearest-neighbour search.

Per-image embeddings were the most requested missing feature of the original. ``export_embeddings``
writes one row per image (and per report) with its ids and two vectors: ``embedding`` (projected,
L2-normalised, in the joint image-text space) and ``raw`` (pooled image-tower features before the
projection; empty for texts). Parquet (list columns, read back by pandas as arrays) is the default;
``.npz`` and ``.csv`` are there for tools without pyarrow. The model that made the file is recorded
in the Parquet schema metadata, so ``neighbors`` can embed a new query with the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammoclip.data.datasets import resize_to, to_tensor
from mammoclip.data.manifest import Bundle
from mammoclip.data.transforms import normalize_images
from mammoclip.errors import DataError
from mammoclip.evaluate import distributed as D
from mammoclip.evaluate.features import check_image_size, extract_features, model_device
from mammoclip.imaging.imageio import read_image

#: Key of the provenance record in the Parquet schema metadata.
META_KEY = b"mammoclip"
#: Id columns written for every row (missing values for the kind they do not apply to).
ID_COLUMNS: tuple[str, ...] = ("id", "kind", "image_id", "report_id", "patient_id", "study_id", "laterality",
                               "view", "split", "path")


def _image_rows(bundle: Bundle) -> pd.DataFrame:
    img = bundle.images
    df = pd.DataFrame({"id": img["image_id"].astype(str), "kind": "image"})
    for col in ID_COLUMNS[2:]:
        df[col] = img[col].astype("string").to_numpy() if col in img.columns else pd.NA
    return df


def _text_rows(bundle: Bundle) -> tuple[pd.DataFrame, list[str]]:
    from mammoclip.evaluate.retrieval import report_texts

    texts = report_texts(bundle)
    df = pd.DataFrame({"id": texts.index.astype(str), "kind": "text"})
    for col in ID_COLUMNS[2:]:
        df[col] = pd.NA
    df["report_id"] = texts.index.astype(str)
    if "report_id" in bundle.images.columns:
        owner = bundle.images.dropna(subset=["report_id"]).drop_duplicates("report_id").set_index("report_id")
        for col in ("patient_id", "study_id", "split"):
            df[col] = df["report_id"].map(owner[col].astype(str)).astype("string")
    return df, texts.tolist()


def export_embeddings(
    model: Any,
    bundle: Bundle,
    out: str | Path,
    *,
    images: bool = True,
    texts: bool = True,
    split: str = "all",
    batch_size: int = 16,
    num_workers: int = 0,
    allow_resize: bool = False,
    checkpoint: str = "",
    progress: bool | None = False,
) -> Path:
    """Write image and/or report embeddings with their ids.

    Args:
        model: A MammoCLIP model.
        bundle: Manifest (+ reports.csv for text embeddings).
        out: ``.parquet``, ``.npz`` or ``.csv`` file.
        images: Export one row per manifest image.
        texts: Export one row per report of ``reports.csv``.
        split: Restrict images to one split (``all`` = every row).
        checkpoint: How to rebuild the model (recorded for ``neighbors``).

    Under torchrun each process embeds its share of the images and reports, the rows are merged in
    manifest order and rank 0 alone writes the file: the same file as one process writes.

    Returns:
        The written path (on every rank).
    """
    from mammoclip.evaluate.zeroshot import encode_text_rows

    out = Path(out)
    if out.suffix not in (".parquet", ".npz", ".csv"):
        raise DataError(f"{out}: unsupported embeddings format; use .parquet, .npz or .csv")
    part = bundle if split == "all" else bundle.split(split)
    frames: list[pd.DataFrame] = []
    emb_rows: list[np.ndarray] = []
    raw_rows: list[np.ndarray | None] = []
    if images and len(part.images):
        check_image_size(model, part, allow_resize=allow_resize)
        feats = extract_features(model, part, kinds=("projected", "pooled"), batch_size=batch_size,
                                 num_workers=num_workers, progress=progress)
        frames.append(_image_rows(part))
        emb_rows.extend(feats["projected"])
        raw_rows.extend(feats["pooled"])
    if texts and len(bundle.reports):
        df, text_list = _text_rows(bundle)
        emb = encode_text_rows(model, text_list)  # (R, D)
        frames.append(df)
        emb_rows.extend(emb)
        raw_rows.extend([None] * len(emb))
    if not frames:
        raise DataError("nothing to embed: no images selected and no reports found")
    table = pd.concat(frames, ignore_index=True)
    meta = {"checkpoint": checkpoint, "image_size": list(model.preprocess_cfg.image_size),
            "embed_dim": int(len(emb_rows[0]))}
    if D.job().is_primary:  # every rank holds the merged rows; one writes them
        _write_table(out, table, emb_rows, raw_rows, meta, images=images)
    D.job_barrier()  # the file exists on every rank's return
    return out


def _write_table(out: Path, table: pd.DataFrame, emb_rows: list[np.ndarray], raw_rows: list[np.ndarray | None],
                 meta: dict[str, Any], *, images: bool) -> None:
    """Write the id table and its vectors in the format of ``out``'s suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tab = pa.Table.from_pandas(table, preserve_index=False)
        tab = tab.append_column("embedding", pa.array([e.astype(np.float32).tolist() for e in emb_rows],
                                                       type=pa.list_(pa.float32())))
        tab = tab.append_column("raw", pa.array([None if r is None else r.astype(np.float32).tolist() for r in raw_rows],
                                                type=pa.list_(pa.float32())))
        tab = tab.replace_schema_metadata({**(tab.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
        pq.write_table(tab, out)
    elif out.suffix == ".npz":
        raw = np.stack([r if r is not None else np.full_like(raw_rows[0], np.nan) for r in raw_rows]) \
            if images and raw_rows and raw_rows[0] is not None else np.zeros((len(emb_rows), 0), np.float32)
        np.savez(out, embedding=np.stack(emb_rows).astype(np.float32), raw=raw.astype(np.float32),
                 meta=json.dumps(meta), **{c: table[c].astype(str).to_numpy().astype("U") for c in ID_COLUMNS})
    else:
        vec = pd.DataFrame(np.stack(emb_rows), columns=[f"e{i}" for i in range(len(emb_rows[0]))])
        pd.concat([table, vec], axis=1).to_csv(out, index=False)


def load_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """Read an embeddings file.

    Returns:
        ``(id table, (N, D) float32 projected embeddings, provenance metadata)``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"embeddings file not found: {path}; create it with `mammoclip embed`")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta_raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        df = pd.read_parquet(path)
        mat = np.stack(df["embedding"].to_numpy()).astype(np.float32)
        return df.drop(columns=["embedding", "raw"]), mat, json.loads(meta_raw) if meta_raw else {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            df = pd.DataFrame({c: data[c] for c in ID_COLUMNS})
            return df, data["embedding"], json.loads(str(data["meta"]))
    df = pd.read_csv(path, dtype=str)
    vec_cols = [c for c in df.columns if c.startswith("e") and c[1:].isdigit()]
    return df.drop(columns=vec_cols), df[vec_cols].astype(np.float32).to_numpy(), {}


@torch.no_grad()
def embed_image_file(model: Any, path: str | Path) -> np.ndarray:
    """``(D,)`` projected embedding of one image file (resized to the model's input size)."""
    image = resize_to(read_image(path), tuple(model.preprocess_cfg.image_size))
    x = to_tensor(image)[None].to(model_device(model))  # (1, 1, H, W)
    was_training = model.training
    model.eval()
    try:
        return model.encode_image(normalize_images(x, model.preprocess_cfg), normalize=True)[0].float().cpu().numpy()
    finally:
        model.train(was_training)


def embed_text(model: Any, text: str) -> np.ndarray:
    """``(D,)`` projected embedding of one text."""
    from mammoclip.evaluate.zeroshot import encode_texts

    was_training = model.training
    model.eval()
    try:
        return encode_texts(model, [text])[0].cpu().numpy()
    finally:
        model.train(was_training)


def nearest_neighbors(table: pd.DataFrame, matrix: np.ndarray, query: np.ndarray, *, k: int = 5,
                      kind: str | None = None) -> pd.DataFrame:
    """Top-``k`` rows by cosine similarity to ``query``.

    Args:
        table: Id table from :func:`load_embeddings`.
        matrix: ``(N, D)`` embeddings.
        query: ``(D,)`` query embedding.
        kind: Restrict to ``image`` or ``text`` rows.

    Returns:
        The ``k`` best rows of ``table`` with ``rank`` and ``score`` columns, best first.
    """
    if matrix.shape[1] != query.shape[0]:
        raise DataError(f"query has dimension {query.shape[0]} but the index has {matrix.shape[1]}; "
                        "embed the query with the model that built the index")
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-12)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    scores = m @ q  # (N,)
    candidates = np.arange(len(table)) if kind is None else np.flatnonzero((table["kind"] == kind).to_numpy())
    order = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
    out = table.iloc[order].reset_index(drop=True).copy()
    out.insert(0, "score", scores[order])
    out.insert(0, "rank", np.arange(1, len(order) + 1))
    return out
