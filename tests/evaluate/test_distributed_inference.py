"""Inference across processes: two gloo ranks give what one process gives, each row exactly once.

The cohort has an odd number of images, so the two shares differ in size; the helpers' own contract
(contiguous shares, merge in row order, a loud error on a duplicate or a gap) is tested in one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.errors import MammoclipError
from mammoclip.evaluate import distributed as D

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ one process ---


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_row_once_in_order(world: int) -> None:
    for n in range(12):
        shares = [D.shard_range(n, r, world) for r in range(world)]
        assert [i for s in shares for i in s] == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [len(D.shard_range(7, r, 2)) for r in range(2)] == [3, 4]


def test_gather_places_rows_and_refuses_gaps_and_duplicates() -> None:
    rows = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    merged = D.gather_rows(3, np.array([2, 0, 1]), {"x": rows})
    assert merged["x"].tolist() == [[3.0, 4.0], [5.0, 6.0], [1.0, 2.0]]
    with pytest.raises(MammoclipError, match=r"rows \[\] came back more than once and rows \[2\] never"):
        D.gather_rows(3, np.array([0, 1]), {"x": rows[:2]})
    with pytest.raises(MammoclipError, match=r"rows \[1\] came back more than once"):
        D.gather_rows(3, np.array([0, 1, 1, 2]), {"x": np.zeros((4, 2))})


def test_outside_a_job_every_call_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.job() == D.DistInfo()
    assert D.sharded(5, lambda rows: {"r": np.arange(rows.start, rows.stop)[:, None] * 2})["r"][:, 0].tolist() \
        == [0, 2, 4, 6, 8]
    assert D.on_primary(lambda: 41 + 1) == 42
    with D.inference_job("cpu") as device:  # not under torchrun: one process, no process group
        assert str(device) == "cpu" and D.job() == D.DistInfo()


@pytest.mark.slow  # two model builds: seconds
def test_registry_models_are_built_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process of a torchrun job builds a registry model without weight files the same way."""
    import torch

    from mammoclip.evaluate.features import resolve_model

    a = resolve_model("mammoclip-tiny")
    torch.manual_seed(123)  # the caller's random state neither matters nor changes
    state = torch.random.get_rng_state()
    b = resolve_model("mammoclip-tiny")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


# ----------------------------------------------------------------------------- two processes ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def odd_cohort(eval_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluation cohort less one image: an odd number of rows, so the two shares differ."""
    from mammoclip.data.manifest import Bundle, load_bundle

    bundle = load_bundle(eval_cohort)
    images = bundle.images.copy()
    images["path"] = [str(bundle.abspath(p)) for p in images["path"].astype(str)]
    if len(images) % 2 == 0:
        images = images.iloc[:-1].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("odd")
    return Bundle(images, bundle.boxes, bundle.reports, folder).save(folder)


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    from mammoclip.models import save_checkpoint

    return Path(save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny"))


def _everything(ckpt: str, manifest: str, out: Path) -> dict:
    """embed, zeroshot, retrieval and probe (two inits) of one cohort: what each rank runs in a job."""
    from mammoclip.data.manifest import load_bundle
    from mammoclip.embed import export_embeddings
    from mammoclip.evaluate.probe import init_factory, run_probe
    from mammoclip.evaluate.retrieval import run_retrieval
    from mammoclip.evaluate.zeroshot import run_zeroshot

    bundle = load_bundle(manifest)
    factory = init_factory(ckpt)
    model = factory("pretrained")
    export_embeddings(model, bundle, out / "emb.parquet", checkpoint=ckpt, batch_size=8)
    return {  # no run folders (their plots take seconds); the command test compares predictions.csv
        "zeroshot": run_zeroshot(model, bundle, "mass", split="all", n_boot=50, batch_size=8),
        "retrieval": run_retrieval(model, bundle, split="all", batch_size=8),
        "probe": run_probe(factory, bundle, "mass", fractions=(1.0,), seeds=(0,), inits=("pretrained", "random"),
                           n_boot=20, cache_dir=out / "cache", batch_size=8),
    }


def _worker(rank: int, world: int, port: int, ckpt: str, manifest: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from mammoclip.data.manifest import load_bundle
    from mammoclip.evaluate.features import extract_features, resolve_model

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # a short timeout: a collective that waits for a rank that never comes fails the test instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    if rank == 0:  # a call by one rank alone outside a job (the trainer's epoch-end zero-shot) needs no partner
        solo = extract_features(resolve_model(ckpt), load_bundle(manifest), kinds=("projected",))["projected"]
        np.save(Path(out) / "solo.npy", solo)
    with D.inference_job("cpu"):
        results = _everything(ckpt, manifest, Path(out))
    (Path(out) / f"results.{rank}.json").write_text(json.dumps(results, sort_keys=True, default=str))


def _assert_same_numbers(a: object, b: object, path: str = "") -> None:
    """Equal structure and strings; numbers within 1e-6 or 1e-4 relative.

    The features themselves are compared at 1e-6 below (float rounding of a different batch make-up);
    numbers computed from a probe *fitted* on them (its ECE, say) move a little more: a 1e-7 change of
    the features moved a test ECE of 0.378 by 1.03e-6 in CI.
    """
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(checkpoint: Path, odd_cohort: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from mammoclip.data.manifest import load_bundle
    from mammoclip.embed import load_embeddings

    n = len(load_bundle(odd_cohort).images)
    assert n % 2 == 1
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    reference = json.loads(json.dumps(_everything(str(checkpoint), str(odd_cohort), one), sort_keys=True,
                                      default=str))
    mp.spawn(_worker, args=(2, _free_port(), str(checkpoint), str(odd_cohort), str(two)), nprocs=2, join=True)

    rank0, rank1 = (json.loads((two / f"results.{r}.json").read_text()) for r in range(2))
    assert rank0 == rank1, "every rank returns rank 0's results"
    _assert_same_numbers(rank0, reference)
    assert rank0["zeroshot"]["counts"]["n_images"] == n

    # embeddings: every image and report once, in manifest order, the vectors of one process
    table1, mat1, _ = load_embeddings(one / "emb.parquet")
    table2, mat2, meta2 = load_embeddings(two / "emb.parquet")
    pd.testing.assert_frame_equal(table1, table2)
    images = table2[table2["kind"] == "image"]
    assert images["image_id"].tolist() == load_bundle(odd_cohort).images["image_id"].astype(str).tolist()
    assert table2["id"].is_unique and meta2["checkpoint"] == str(checkpoint)
    np.testing.assert_allclose(mat2, mat1, atol=1e-6)
    raw1, raw2 = (np.stack(pd.read_parquet(d / "emb.parquet")["raw"].dropna().to_numpy()) for d in (one, two))
    np.testing.assert_allclose(raw2, raw1, atol=1e-6)

    # probe: rank 0 alone wrote one feature cache per init, and the random baseline is not the checkpoint
    assert len(list((two / "cache").glob("features-*.npz"))) == 2
    # one rank alone, outside a job, computed every row itself
    np.testing.assert_allclose(np.load(two / "solo.npy"), mat1[: len(images)], atol=1e-6)


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_zeroshot_command_equals_one_process(checkpoint: Path, odd_cohort: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The command itself under torchrun: rank 0 alone prints and writes; predictions equal one process's."""
    from mammoclip.cli.main import main

    args = ["zeroshot", "--checkpoint", str(checkpoint), "--manifest", str(odd_cohort), "--task", "mass",
            "--split", "all", "--n-boot", "20", "--workers", "0", "--batch-size", "8"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mammoclip", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"results -> {tmp_path / 'two'}") == 1, proc.stdout  # printed once, by rank 0
    p1, p2 = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("one", "two"))
    assert p2["image_id"].is_unique and len(p2) % 2 == 1
    pd.testing.assert_frame_equal(p2, p1, atol=1e-6, check_exact=False)
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    _assert_same_numbers(r2["metrics"], r1["metrics"])
