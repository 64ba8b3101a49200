"""Embedding export round-trips with pandas; neighbours of an indexed image start with itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle
from mammoclip.embed import embed_image_file, export_embeddings, load_embeddings, nearest_neighbors

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    import torch

    from mammoclip.models import create_model

    torch.manual_seed(0)
    return create_model("mammoclip-tiny").eval()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, tiny) -> Path:  # noqa: ANN001
    from mammoclip.synthetic import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("emb"), 3, seed=1, image_size=tiny.preprocess_cfg.image_size,
                           progress=False)


def test_parquet_round_trip_and_self_neighbour(tiny, cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bundle = load_bundle(cohort)
    out = export_embeddings(tiny, bundle, tmp_path / "emb.parquet", checkpoint="mammoclip-tiny")
    df = pd.read_parquet(out)
    images = df[df["kind"] == "image"]
    texts = df[df["kind"] == "text"]
    assert list(images["image_id"]) == list(bundle.images["image_id"].astype(str))
    assert len(texts) == len(bundle.reports)
    vec = np.stack(images["embedding"].to_numpy())
    assert vec.shape == (len(bundle.images), tiny.embed_dim)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert np.stack(images["raw"].to_numpy()).shape[1] == tiny.image_tower.num_features
    assert texts["raw"].isna().all()

    table, matrix, meta = load_embeddings(out)
    assert meta["checkpoint"] == "mammoclip-tiny"
    assert np.array_equal(matrix[: len(images)], vec.astype(np.float32))
    query_path = bundle.abspath(bundle.images["path"].iloc[2])
    hits = nearest_neighbors(table, matrix, embed_image_file(tiny, query_path), k=3, kind="image")
    assert hits["id"].iloc[0] == bundle.images["image_id"].iloc[2]
    assert hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_other_formats_round_trip(tiny, cohort: Path, tmp_path: Path, suffix: str) -> None:  # noqa: ANN001
    bundle = load_bundle(cohort)
    out = export_embeddings(tiny, bundle, tmp_path / f"emb{suffix}", texts=False)
    table, matrix, _ = load_embeddings(out)
    assert list(table["id"].astype(str)) == list(bundle.images["image_id"].astype(str))
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


def test_embed_and_neighbors_cli(tiny, cohort: Path, tmp_path: Path,  # noqa: ANN001
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mammoclip.models import save_checkpoint

    # A saved checkpoint, not the registry name: two fresh random models would not embed alike, and
    # `neighbors` rebuilds the model that the index records.
    checkpoint = save_checkpoint(tiny, tmp_path / "tiny")
    index = tmp_path / "e.parquet"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(cohort), "--workers", "0",
                 "--out", str(index)]) == 0
    bundle = load_bundle(cohort)
    capsys.readouterr()
    query = bundle.abspath(bundle.images["path"].iloc[0])
    assert main(["neighbors", "--index", str(index), "--image", str(query), "-k", "3", "--kind", "image"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and bundle.images["image_id"].iloc[0] in lines[1]
    assert main(["neighbors", "--index", str(index), "--text", "spiculated mass", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
