"""The process pool: single-threaded workers, small results with peak memory, same output as in-process."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.data.imageio import read_image
from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import PreprocessOptions, _init_worker, _pool_context, preprocess
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
