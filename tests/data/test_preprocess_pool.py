"""The process pool: single-threaded workers, small results with peak memory, same output as in-process."""

from __future__ import annotations

import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import (
    PreprocessOptions,
    _init_worker,
    _pool_context,
    auto_workers,
    preprocess,
    usable_cores,
)
from mammoclip.errors import ConfigError
from mammoclip.imaging.imageio import read_image
from tests.data.test_preprocess import SIZE, make_source


def _cv2_threads() -> int:
    import cv2

    return int(cv2.getNumThreads())


def test_worker_initializer_limits_threads() -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context(), initializer=_init_worker) as pool:
        assert pool.submit(_cv2_threads).result() == 1


def test_two_workers_match_one_and_report_memory(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=4)
    results: list[dict[str, Any]] = []
    preprocess(src, tmp_path / "one", PreprocessOptions(size=SIZE), workers=1)
    preprocess(src, tmp_path / "two", PreprocessOptions(size=SIZE), workers=2, on_result=results.append)
    assert len(results) == 4
    for res in results:
        assert set(res) >= {"image_id", "record", "pid", "peak_rss_kb", "start_rss_kb"}
        assert res["pid"] != os.getpid()
        assert res["peak_rss_kb"] >= res["start_rss_kb"] > 0
        assert not any(isinstance(v, np.ndarray) for v in res.values())  # no pixels cross the pipe
    one, two = load_bundle(tmp_path / "one"), load_bundle(tmp_path / "two")
    for rel in one.images["path"]:
        np.testing.assert_array_equal(read_image(tmp_path / "one" / rel), read_image(tmp_path / "two" / rel))
    assert list(two.images["path"]) == list(one.images["path"])


def _faults_per_image(n: int) -> int:
    import resource

    from mammoclip.data.preprocess import reuse_freed_memory

    assert reuse_freed_memory()
    sizes = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):  # two 40 MB buffers (above glibc's 32 MB mmap cap), freed each time, like file bytes
        sizes.append(len(bytes(bytearray(b"\1") * (40 << 20))))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // n


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc mallopt")
def test_reuse_freed_memory_avoids_refaulting() -> None:
    """With the thresholds raised, freed 40 MB buffers are reused: the next ones do not fault again."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context()) as pool:
        faults = pool.submit(_faults_per_image, 8).result()
    assert faults < 20480 // 4  # glibc's default maps them afresh: 2 x 10240 page faults per round


def test_auto_workers_one_per_core_but_not_for_small_batches() -> None:
    assert auto_workers(1000, cores=8) == 8
    assert auto_workers(40, cores=8) == 5  # 8 images per worker at least: the pool start is ~1 s
    assert auto_workers(15, cores=2) == 1 and auto_workers(16, cores=2) == 2
    assert auto_workers(0, cores=4) == 1
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_workers_zero_picks_automatically_and_is_reported(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=4)
    result = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=0)
    assert result.workers == 1 and result.processed == 4  # 4 images: no pool
    assert "1 worker)" in result.summary()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["workers"] == 1
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        preprocess(src, tmp_path / "bad", PreprocessOptions(size=SIZE), workers=-1)


def _slow_source(root: Path, n: int) -> Path:
    """``n`` names for one 2400x1800 phantom DICOM (~30-60 ms per image): a batch that takes a while."""
    import shutil

    from mammoclip.data.manifest import Bundle
    from tests.imaging.dicom_factory import phantom, write_dicom

    first = write_dicom(root / "dicom" / "big0.dcm", phantom((2400, 1800), seed=0), bits=12)
    rows = []
    for i in range(n):
        path = first if i == 0 else Path(shutil.copy(first, root / "dicom" / f"big{i}.dcm"))
        rows.append({"image_id": path.stem, "patient_id": f"p{i}", "study_id": f"s{i}", "laterality": "L",
                     "view": "CC", "path": f"dicom/{path.name}", "split": "train", "source": "test"})
    Bundle(pd.DataFrame(rows), root=root).save(root)
    return root / "manifest.csv"


def test_a_killed_worker_loses_nothing_its_images_are_rerun_alone(tmp_path: Path) -> None:
    """A worker killed mid-batch from outside (as the OOM killer would) costs no image.

    The images in flight on the broken pool are rerun one per process: none of them is to blame,
    so all succeed, and a fresh pool finishes the batch.
    """
    import signal

    # 16 images of ~30-60 ms on 2 workers: when the first result reaches this process, most are unfinished
    src = _slow_source(tmp_path / "src", n=16)
    killed: list[int] = []

    def kill_first_worker(res: dict[str, Any]) -> None:
        if not killed and "pid" in res:
            killed.append(res["pid"])
            os.kill(res["pid"], signal.SIGKILL)

    first = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=2, on_result=kill_first_worker)
    # the surviving worker may have finished an image whose result the broken pool dropped: its
    # rerun finds it up to date on disk and skips it
    assert killed and first.failed == 0 and first.processed + first.skipped == 16, first.failures
    assert not list((tmp_path / "out").rglob("*.tmp"))  # PNGs and sidecars are written atomically
    assert not list((tmp_path / "out").rglob("*.failed.json"))  # nothing was blamed
    assert len(pd.read_csv(tmp_path / "out" / "failures.csv")) == 0
    assert len(load_bundle(tmp_path / "out").images) == 16
    second = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=2)
    assert (second.processed, second.skipped, second.failed) == (0, 16, 0)


def test_an_unexpected_error_fails_one_image_not_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammoclip.data.preprocess as prep

    real = prep.process_image

    def flaky(path: Any, options: PreprocessOptions, *args: Any) -> Any:
        if str(path).endswith("im1.dcm"):
            raise RuntimeError("decoder exploded")
        return real(path, options, *args)

    monkeypatch.setattr(prep, "process_image", flaky)
    result = preprocess(make_source(tmp_path / "src", n=3), tmp_path / "out", PreprocessOptions(size=SIZE),
                        isolate=False)  # the patch exists in this process only
    assert (result.processed, result.failed) == (2, 1) and result.codes == ["PROCESS_ERROR"]
    [(file, reason)] = result.failures
    assert file.endswith("im1.dcm") and reason.endswith("RuntimeError: decoder exploded")
