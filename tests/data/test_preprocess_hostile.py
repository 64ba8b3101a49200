"""Batches that mix hostile files with good ones: every input accounted for once, with a code; no batch dies.

Hostile files come from ``tests/imaging/test_dicom_hostile.py``. Decoder crashes and panics are
simulated by patching ``process_image``; the pool then uses ``fork`` workers (which inherit the
patch) instead of the forkserver's fresh imports.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mammoclip.data.preprocess as prep
from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import PreprocessOptions, _safe, preprocess
from mammoclip.errors import ConfigError
from mammoclip.imaging import failures as fc
from mammoclip.imaging.dicom import DecodeLimits
from mammoclip.imaging.imageio import read_image
from tests.data.test_preprocess import SIZE, make_source
from tests.data.test_preprocess_bad import _add_rows
from tests.imaging.dicom_factory import phantom, write_dicom
from tests.imaging.test_dicom_hostile import HOSTILE

GOOD = 3


def _codes(out: Path) -> dict[str, tuple[str, str]]:
    """failures.csv as file name -> (code, reason)."""
    failures = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
    assert list(failures.columns) == ["file", "code", "reason"]
    assert len(set(failures["file"])) == len(failures)  # every input at most once
    return {Path(f).name: (c, r) for f, c, r in zip(failures["file"], failures["code"], failures["reason"],
                                                     strict=True)}


@pytest.fixture
def fork_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pool workers forked from this process, so that they see the test's monkeypatches."""
    import multiprocessing as mp

    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # no OpenCV pool thread may hold a lock across the fork
    monkeypatch.setattr(prep, "_pool_context", lambda: mp.get_context("fork"))
    yield
    cv2.setNumThreads(threads)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_files_mixed_with_good_ones(tmp_path: Path, workers: int) -> None:
    src_dir = tmp_path / "src"
    manifest = make_source(src_dir, n=GOOD)
    extra = []
    for name, (writer, _) in HOSTILE.items():
        writer(src_dir / "dicom" / f"{name}.dcm")
        extra.append((name, f"dicom/{name}.dcm"))
    os.mkfifo(src_dir / "dicom" / "fifo.dcm")  # an open() would hang the batch
    (src_dir / "dicom" / "folder.dcm").mkdir()
    write_dicom(src_dir / "dicom" / "blank.dcm", np.full((200, 128), 1000, np.uint16), bits=12)
    extra += [("fifo", "dicom/fifo.dcm"), ("folder", "dicom/folder.dcm"), ("blank", "dicom/blank.dcm")]
    src = _add_rows(manifest, extra)

    out = tmp_path / "out"
    result = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers)
    expected = {f"{name}.dcm": code for name, (_, code) in HOSTILE.items()}
    expected |= {"fifo.dcm": fc.NOT_A_FILE, "folder.dcm": fc.NOT_A_FILE, "blank.dcm": fc.BLANK_OUTPUT}
    assert (result.processed, result.failed) == (GOOD, len(expected))
    codes = _codes(out)
    assert {name: code for name, (code, _) in codes.items()} == expected
    for name, (_, reason) in codes.items():
        assert "\n" not in reason and name in reason and len(reason) <= fc.MAX_REASON_CHARS
    assert sorted(load_bundle(out, check_files=True).images["image_id"]) == [f"im{i}" for i in range(GOOD)]
    by_code: dict[str, int] = {}
    for code in expected.values():
        by_code[code] = by_code.get(code, 0) + 1
    assert result.by_code == by_code
    assert json.loads((out / "summary.json").read_text())["failures_by_code"] == result.by_code
    table = result.failure_table()
    assert table.startswith(f"failures by code ({len(expected)}):")
    line = next(x for x in table.splitlines() if x.split()[0] == "TOO_LARGE")
    assert line.split()[1] == str(by_code["TOO_LARGE"]) and line.endswith(fc.FAILURE_CODES["TOO_LARGE"].message)
    assert len(table.splitlines()) == 1 + len(by_code)


def _crash_on(name: str, how: str, log: Path) -> Any:
    """A ``process_image`` that dies natively (abort / segfault) on the file ``name``."""
    real = prep.process_image

    def crashing(path: Any, options: Any, *args: Any) -> Any:
        if Path(path).name == name:
            with open(log, "a") as fh:
                fh.write("x")
            if how == "abort":
                os.abort()
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, options, *args)

    return crashing


@pytest.mark.parametrize(("workers", "how"), [(1, "abort"), (2, "segv")])
def test_native_crash_fails_only_the_guilty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fork_workers: None, workers: int, how: str) -> None:
    manifest = make_source(tmp_path / "src", n=4)
    (tmp_path / "src" / "dicom" / "evil.dcm").write_bytes((tmp_path / "src" / "dicom" / "im0.dcm").read_bytes())
    src = _add_rows(manifest, [("evil", "dicom/evil.dcm")])  # the last row: innocents share its chunk
    log = tmp_path / "crashes.log"
    real = prep.process_image
    monkeypatch.setattr(prep, "process_image", _crash_on("evil.dcm", how, log))
    out = tmp_path / "out"

    first = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True)
    assert (first.processed, first.failed, first.codes) == (4, 1, [fc.DECODE_CRASH])
    code, reason = _codes(out)["evil.dcm"]
    assert code == fc.DECODE_CRASH and ("SIGABRT" if how == "abort" else "SIGSEGV") in reason
    assert len(load_bundle(out, check_files=True).images) == 4
    crashes = len(log.read_text())
    assert crashes == 2  # once in the pool, once alone (which names it)
    record = next(out.rglob("*.failed.json"))
    assert json.loads(record.read_text())["code"] == fc.DECODE_CRASH

    again = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True)  # not retried
    assert (again.processed, again.skipped, again.codes) == (0, 4, [fc.DECODE_CRASH])
    assert len(log.read_text()) == crashes and "recorded by an earlier run" in again.failures[0][1]

    retried = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True, retry_failed=True)
    assert retried.codes == [fc.DECODE_CRASH] and len(log.read_text()) == crashes + 2

    monkeypatch.setattr(prep, "process_image", real)  # the decoder is fixed: the retry succeeds
    fixed = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True, retry_failed=True)
    assert (fixed.processed, fixed.skipped, fixed.failed) == (1, 4, 0)
    assert not list(out.rglob("*.failed.json"))


def _hang_on(name: str, log: Path) -> Any:
    """A ``process_image`` that never returns on the file ``name`` (a decoder stuck in native code)."""
    import time

    real = prep.process_image

    def hanging(path: Any, options: Any, *args: Any) -> Any:
        if Path(path).name == name:
            with open(log, "a") as fh:
                fh.write("x")
            time.sleep(3600)
        return real(path, options, *args)

    return hanging


@pytest.mark.slow  # ~6 s: the 3 s timeout runs out twice (in the pool, then alone)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_hanging_decoder_times_out_and_fails_only_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fork_workers: None, workers: int) -> None:
    manifest = make_source(tmp_path / "src", n=3)
    (tmp_path / "src" / "dicom" / "stuck.dcm").write_bytes((tmp_path / "src" / "dicom" / "im0.dcm").read_bytes())
    src = _add_rows(manifest, [("stuck", "dicom/stuck.dcm")])
    log = tmp_path / "hangs.log"
    monkeypatch.setattr(prep, "process_image", _hang_on("stuck.dcm", log))
    out = tmp_path / "out"

    result = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True, timeout=3.0)
    assert (result.processed, result.failed, result.codes) == (3, 1, [fc.DECODE_TIMEOUT])
    code, reason = _codes(out)["stuck.dcm"]
    assert code == fc.DECODE_TIMEOUT and "still running after 3 s" in reason
    assert len(load_bundle(out, check_files=True).images) == 3
    assert len(log.read_text()) == 2  # once in the pool, once alone (which names it)
    assert json.loads(next(out.rglob("*.failed.json")).read_text())["code"] == fc.DECODE_TIMEOUT
    again = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers, isolate=True, timeout=3.0)
    assert (again.processed, again.codes) == (0, [fc.DECODE_TIMEOUT]) and len(log.read_text()) == 2  # not retried
    with pytest.raises(ConfigError, match="timeout must be > 0"):
        preprocess(src, out, PreprocessOptions(size=SIZE), timeout=0)


def test_cli_with_one_worker_survives_a_native_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fork_workers: None, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_source(tmp_path / "src", n=2)
    (tmp_path / "src" / "dicom" / "evil.dcm").write_bytes((tmp_path / "src" / "dicom" / "im0.dcm").read_bytes())
    src = _add_rows(manifest, [("evil", "dicom/evil.dcm")])
    monkeypatch.setattr(prep, "process_image", _crash_on("evil.dcm", "abort", tmp_path / "log"))
    out = tmp_path / "out"
    assert main(["preprocess", str(src), "--out", str(out), "--size", "96x64", "--workers", "1"]) == 0
    assert "failed [DECODE_CRASH]" in capsys.readouterr().out
    assert {name: code for name, (code, _) in _codes(out).items()} == {"evil.dcm": fc.DECODE_CRASH}
    assert len(load_bundle(out, check_files=True).images) == 2
    # the record makes a rerun skip it; --retry-failed tries again
    assert main(["preprocess", str(src), "--out", str(out), "--size", "96x64", "--workers", "1"]) == 0
    assert len((tmp_path / "log").read_text()) == 2
    assert main(["preprocess", str(src), "--out", str(out), "--size", "96x64", "--workers", "1",
                 "--retry-failed"]) == 0
    assert len((tmp_path / "log").read_text()) == 4


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException (a BaseException)."""


@pytest.mark.parametrize("workers", [1, 2])
def test_decoder_panic_in_a_worker_fails_one_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fork_workers: None, workers: int) -> None:
    real = prep.process_image

    def panicking(path: Any, options: Any, *args: Any) -> Any:
        if Path(path).name == "im1.dcm":
            raise FakePanic("thread '<unnamed>' panicked at 'index out of bounds'\nnote: run with RUST_BACKTRACE")
        return real(path, options, *args)

    monkeypatch.setattr(prep, "process_image", panicking)
    result = preprocess(make_source(tmp_path / "src", n=4), tmp_path / "out", PreprocessOptions(size=SIZE),
                        workers=workers)
    assert (result.processed, result.codes) == (3, [fc.DECODE_PANIC])
    assert result.failures[0][1].endswith("FakePanic: thread '<unnamed>' panicked at 'index out of bounds' "
                                          "note: run with RUST_BACKTRACE")


def test_sanitised_names_are_injective() -> None:
    assert _safe("a_b") == "a_b" and _safe("im-1.2") == "im-1.2"  # clean ids keep their names
    assert _safe("a/b").startswith("a_b-") and _safe("a/b") != _safe("a_b") != _safe("a?b")
    assert _safe("a/b") != _safe("a?b") and len(_safe("a/b")) == len("a_b-") + 8
    assert _safe("..") not in ("..", ".") and _safe("") != "_"  # no path traversal, no empty name


def test_ids_that_sanitise_alike_get_their_own_png(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    manifest = make_source(src_dir, n=2)
    write_dicom(src_dir / "dicom" / "other.dcm", phantom((400, 256), seed=9, lesion=None), bits=12)
    bundle = load_bundle(_add_rows(manifest, [("im0/x", "dicom/im0.dcm"), ("im0_x", "dicom/other.dcm")]))
    images = bundle.images.copy()
    images.loc[images["image_id"].isin(["im0/x", "im0_x"]), "patient_id"] = "p/1"
    images.loc[images["image_id"] == "im0", "patient_id"] = "p_1"  # patient folders collide the same way
    bundle.images = images
    out = tmp_path / "out"
    result = preprocess(bundle, out, PreprocessOptions(size=SIZE), workers=1)
    assert (result.processed, result.failed) == (4, 0)
    rows = load_bundle(out, check_files=True).images.set_index("image_id")
    assert rows["path"].is_unique
    assert not np.array_equal(read_image(out / rows.loc["im0/x", "path"]), read_image(out / rows.loc["im0_x", "path"]))
    np.testing.assert_array_equal(read_image(out / rows.loc["im0/x", "path"]), read_image(out / rows.loc["im0", "path"]))


def test_left_out_files_reach_failures_csv_with_their_code(tmp_path: Path) -> None:
    root = tmp_path / "export"
    for lat in ("L", "R"):
        write_dicom(root / "p" / "s" / f"{lat}.dcm", phantom((200, 128), side="left" if lat == "L" else "right"),
                    bits=12, laterality=lat, patient_id="p")
    write_dicom(root / "p" / "s" / "scout.dcm", np.zeros((8, 8), np.uint16), modality="CT")
    (root / "p" / "s" / "notes.dcm").write_text("not a DICOM")
    assert main(["manifest", "build", str(root), "--out", str(tmp_path / "m")]) == 0
    result = preprocess(tmp_path / "m", tmp_path / "o", PreprocessOptions(size=SIZE), workers=1)
    assert result.processed == 2
    codes = _codes(tmp_path / "o")
    assert {name: code for name, (code, _) in codes.items()} == {"scout.dcm": fc.LEFT_OUT, "notes.dcm": fc.LEFT_OUT}
    assert "CT" in codes["scout.dcm"][1]


def test_cli_max_pixels_and_failure_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src", n=2)  # 400 x 256 = 102400 pixels each
    out = tmp_path / "o"
    args = ["preprocess", str(src), "--out", str(out), "--size", "96x64", "--workers", "1"]
    assert main([*args, "--max-pixels", "102399"]) == 1  # nothing processed
    printed = capsys.readouterr().out
    assert "failed [TOO_LARGE]" in printed and "failures by code (2):" in printed
    assert {code for code, _ in _codes(out).values()} == {fc.TOO_LARGE}
    assert main([*args, "--max-pixels", "102400"]) == 0
    assert len(load_bundle(out).images) == 2 and _codes(out) == {}
    with pytest.raises(SystemExit):
        main([*args, "--max-pixels", "0"])


def test_library_budget_and_unbounded(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=1)
    tight = preprocess(src, tmp_path / "a", PreprocessOptions(size=SIZE), limits=DecodeLimits(max_pixels=100))
    assert tight.codes == [fc.TOO_LARGE]
    assert preprocess(src, tmp_path / "b", PreprocessOptions(size=SIZE), limits=None).processed == 1
