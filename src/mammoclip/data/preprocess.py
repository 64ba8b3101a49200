"""Batch preprocessing: a DICOM manifest (or an adapter source) -> PNGs + manifest with transform record.

Design choices, each for a reason the original lacked (docs/original.md §1, §10):

* Each worker decodes a DICOM **once** and maps all of that image's boxes and masks (the original
  re-decoded once per finding).
* Work is spread over a ``ProcessPoolExecutor``; workers read and write the files themselves and
  return only small dicts (record, mask paths, timings, peak RSS), never arrays, so memory per
  worker is one image. Each worker runs single-threaded (:func:`_init_worker`), so K workers use
  K cores without oversubscribing them.
* Resumable: every PNG gets a JSON sidecar (``<png>.json``) with the source's size and mtime, the
  options and the record; a later run with the same options skips it without decoding.
* Shardable: ``shard=(i, N)`` processes every N-th image and writes ``manifest.part-i.csv``,
  ``boxes.part-i.csv``, ``failures.part-i.csv``; :func:`merge_shards` joins them.
* A failing image is logged in ``failures.csv`` (file, code, one-line reason; codes in
  :mod:`mammoclip.imaging.failures`) and the batch goes on, whatever the file does: every exception
  type is caught in the worker, the declared size is checked against a budget before decoding
  (:class:`~mammoclip.imaging.dicom.DecodeLimits`), and images are decoded in child processes
  (also with one worker), so a native crash costs one pool; the images that were in flight are
  then rerun one per process, which names the guilty file (``DECODE_CRASH``, recorded so that a
  rerun skips it) and clears the innocent ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip.constants import PAPER_BORDER_CROP, PAPER_IMAGE_SIZE
from mammoclip.data.manifest import (
    BOX_COLUMNS,
    MANIFEST_FILE,
    TRANSFORM_COLUMNS,
    Bundle,
    empty_boxes,
    load_bundle,
    write_boxes,
    write_manifest,
    write_reports,
)
from mammoclip.errors import ConfigError, DataError, ImageError
from mammoclip.imaging import failures as fc
from mammoclip.imaging.breast import (
    FLIP_TARGETS,
    ORIENTATION_SOURCES,
    RESIZE_MODES,
    SEGMENT_MAX_SIDE,
    WINDOWS,
    BreastPreprocess,
    TransformRecord,
    paper_preprocess,
)
from mammoclip.imaging.dicom import (
    DEFAULT_LIMITS,
    DecodeLimits,
    DicomMeta,
    J2KHeader,
    Reduce,
    check_file,
    decode_dicom,
    read_dicom,
)
from mammoclip.imaging.imageio import read_image, write_bytes_atomic, write_png
from mammoclip.progress import progress_bar

MODES: tuple[str, ...] = ("ours", "paper")
WINDOW_CHOICES: tuple[str, ...] = ("voi", *WINDOWS)
FAILURES_FILE = "failures.csv"
FAILURE_COLUMNS: tuple[str, ...] = ("file", "code", "reason")
SUMMARY_FILE = "summary.json"
#: Suffix of the record a crashed image leaves next to its (missing) PNG: ``<png>.failed.json``.
FAILED_RECORD_SUFFIX = ".failed.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessOptions:
    """What the processed images look like.

    Attributes:
        size: Output (H, W); the paper's is 1520 x 912.
        resize: ``stretch`` (paper) or ``pad`` (aspect kept, padded on the nipple side).
        bits: 8 or 16-bit PNG.
        flip_to: ``left`` mirrors breasts so the chest wall is on the left; ``none`` keeps them.
        window: ``voi`` (the DICOM's VOI LUT/window; min-max in the breast when absent), ``minmax``
            or ``percentile`` (0.5-99.5 %), both computed inside the breast crop.
        mode: ``ours`` (segmentation crop) or ``paper`` (docs/original.md §1 reproduced exactly; only
            ``size`` applies).
        j2k_reduce: JPEG 2000 input, ``ours`` mode: ``0`` decodes in full; ``N`` drops N wavelet
            resolution levels (a decode ``2**N`` times smaller per side, capped by the codestream);
            ``auto`` the largest reduction that never upsamples the breast crop to ``size``, chosen
            on a cheap low-resolution decode (:func:`process_image`). Other syntaxes ignore it.
    """

    size: tuple[int, int] = PAPER_IMAGE_SIZE
    resize: str = "stretch"
    bits: int = 8
    flip_to: str = "left"
    window: str = "voi"
    mode: str = "ours"
    j2k_reduce: int | str = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "j2k_reduce", parse_j2k_reduce(self.j2k_reduce))
        checks = {"resize": RESIZE_MODES, "flip_to": FLIP_TARGETS, "window": WINDOW_CHOICES, "mode": MODES}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.bits not in (8, 16):
            raise ConfigError(f"bits must be 8 or 16, got {self.bits}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ConfigError(f"size must be HxW with both sides >= 8, got {self.size}")
        if self.mode == "paper" and (self.bits, self.flip_to, self.j2k_reduce) != (8, "none", 0):
            object.__setattr__(self, "bits", 8)
            object.__setattr__(self, "flip_to", "none")
            object.__setattr__(self, "j2k_reduce", 0)  # the original decodes in full


#: ``j2k_reduce`` value that picks the level per image (:func:`process_image`).
J2K_REDUCE_AUTO = "auto"
#: Largest level ``j2k_reduce`` accepts: 2**8 = 256 times smaller per side is below any output size.
MAX_J2K_REDUCE: int = 8


def parse_j2k_reduce(value: int | str) -> int | str:
    """``"auto"`` or a level ``0..MAX_J2K_REDUCE`` (an int or its text) -> ``"auto"`` or the int."""
    if isinstance(value, str) and value.strip().lower() == J2K_REDUCE_AUTO:
        return J2K_REDUCE_AUTO
    try:
        level = int(value) if not isinstance(value, (bool, float)) else None
    except ValueError:
        level = None
    if level is None or not 0 <= level <= MAX_J2K_REDUCE:
        raise ConfigError(f"j2k_reduce must be {J2K_REDUCE_AUTO!r} or a level 0..{MAX_J2K_REDUCE}, got {value!r}")
    return level


def parse_size(text: str) -> tuple[int, int]:
    """``"1520x912"`` -> ``(1520, 912)`` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"size must look like HEIGHTxWIDTH (e.g. 1520x912), got {text!r}") from err
    return h, w


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; shards are numbered from 0."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise ConfigError(f"shard must look like i/N (e.g. 0/4), got {text!r}") from err
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def process_image(path: str | Path, options: PreprocessOptions, limits: DecodeLimits | None = DEFAULT_LIMITS
                  ) -> tuple[np.ndarray, TransformRecord]:
    """Decode one DICOM and preprocess it. Returns the uint8/uint16 image and its record.

    Raises:
        ImageError: with a code of :mod:`mammoclip.imaging.failures`; ``BLANK_OUTPUT`` when the
            processed image holds a single value (an all-black PNG is never a success).
    """
    if options.mode == "paper":
        values, meta = read_dicom(path, voi=False, invert=False, limits=limits)
        if min(values.shape) <= 2 * PAPER_BORDER_CROP:
            raise ImageError(f"{path}: image {values.shape} too small for the paper's border crop", fc.TOO_SMALL)
        image, record = paper_preprocess(values, meta.inverted, options.size, border=PAPER_BORDER_CROP)
    else:
        use_voi = options.window == "voi"
        transform = BreastPreprocess(options.size, resize=options.resize, flip_to=options.flip_to,
                                     window="minmax" if use_voi else options.window, bits=options.bits)

        def decode(reduce: Reduce) -> tuple[np.ndarray, np.ndarray | None, DicomMeta]:
            # Codes + LUT: only the segmentation subsample and the crop are ever converted to float.
            return decode_dicom(path, voi=use_voi, invert=True, limits=limits, reduce=reduce)

        planned: TransformRecord | None = None
        if options.j2k_reduce == J2K_REDUCE_AUTO:
            codes, lut, meta = decode(functools.partial(probe_level, options.size))
            if meta.reduce:  # a JPEG 2000 file decoded small: find the crop, then the level it allows
                planned, _ = transform.plan(codes, lut=lut, patient_orientation=meta.patient_orientation,
                                            laterality=meta.image_laterality)
                level = auto_level(planned.scale_x, planned.scale_y, meta.reduce)
                if level != meta.reduce:
                    planned = None  # planned again on the decode it renders
                    codes, lut, meta = decode(level)
        else:
            codes, lut, meta = decode(int(options.j2k_reduce))
        if planned is None:
            planned, _ = transform.plan(codes, lut=lut, patient_orientation=meta.patient_orientation,
                                        laterality=meta.image_laterality)
        record = planned
        window_range = meta.value_range if use_voi and meta.has_voi else None
        image = transform.render(codes, record, window_range, lut=lut)
        if meta.reduce:
            record = on_original_grid(record, meta.reduce, (meta.rows, meta.columns))
    if image.size and image.min() == image.max():
        raise ImageError(f"{path}: the processed image holds the single value {image.flat[0]} (blank)",
                         fc.BLANK_OUTPUT)
    return image, record


def probe_level(size: tuple[int, int], header: J2KHeader) -> int:
    """Level of ``auto``'s first, cheap decode: the segmentation's working size, when a reduction can help.

    The breast is found on an image whose longest side stays at or above
    :data:`~mammoclip.imaging.breast.SEGMENT_MAX_SIDE` (segmentation subsamples to that anyway);
    0 (decode in full at once, no wasted probe) when even the whole image halved is smaller than
    the output ``size``, so that no crop could allow a reduction.
    """
    if header.rows >> 1 < size[0] or header.columns >> 1 < size[1]:
        return 0
    level = 0
    while level < header.levels and max(header.rows, header.columns) >> (level + 1) >= SEGMENT_MAX_SIDE:
        level += 1
    return level


def auto_level(scale_x: float, scale_y: float, probe: int) -> int:
    """The largest level ``<= probe`` at which neither axis of the crop is upsampled to the output.

    ``scale_x``/``scale_y`` are the record's scales planned on a decode reduced ``probe`` levels
    (output pixels per decoded pixel); one level less doubles the decoded pixels, halving them.
    """
    level = probe
    while level > 0 and max(scale_x, scale_y) * 2.0 ** (level - probe) > 1 + 1e-9:
        level -= 1
    return level


def on_original_grid(record: TransformRecord, level: int, shape: tuple[int, int]) -> TransformRecord:
    """A record planned on a decode reduced ``level`` times, restated in original DICOM pixels.

    Reduced pixel ``n`` stands for original pixels ``[n * 2**level, (n + 1) * 2**level)``
    (:func:`mammoclip.imaging.dicom.decode_dicom` drops a partial last row or column), so the crop
    scales by ``2**level`` and the scales divide by it. Both are exact in floating point (powers of
    two), so boxes map to the same processed coordinates as on the reduced grid, and masks on the
    original grid go through :meth:`TransformRecord.apply` unchanged.
    """
    f = 1 << level
    return replace(record, orig_height=int(shape[0]), orig_width=int(shape[1]),
                   crop_x0=record.crop_x0 * f, crop_y0=record.crop_y0 * f,
                   crop_x1=record.crop_x1 * f, crop_y1=record.crop_y1 * f,
                   scale_x=record.scale_x / f, scale_y=record.scale_y / f, reduce=level)


_WORKER_START_RSS_KB: int | None = None


def _pool_context() -> Any:
    """The multiprocessing context of the pool: ``forkserver`` where the platform has it.

    A plain ``fork`` copies the parent's lock states but not its threads: a child forked while one
    of OpenCV's pool threads held its mutex hangs on the first OpenCV call (seen in the test
    suite under load). Forkserver workers are forked from a clean single-threaded server that
    imported the per-image libraries once (~1 s, once per parent process), so each new worker
    starts in milliseconds. Where forkserver is missing (Windows) the platform default is used.
    As with any non-fork start method, a script calling :func:`preprocess` with ``workers > 1``
    needs the ``if __name__ == "__main__":`` guard.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "cv2", "pydicom.pixels", "scipy.sparse"])
    return ctx


#: Heap size below which glibc keeps freed memory for reuse instead of unmapping it (bytes).
HEAP_REUSE_BYTES: int = 512 << 20


def reuse_freed_memory() -> bool:
    """Make glibc reuse freed image buffers instead of returning them to the OS after every image.

    By default glibc serves blocks above ~32 MB (a decoded frame, the float crop) with fresh
    ``mmap`` pages and unmaps them on free, so every image page-faults ~7000 zeroed pages back in:
    measured ~30 % of the per-image time on 3328x2560 files. Raising the mmap and trim thresholds
    keeps those pages in the heap for the next image (faults drop ~10x, peak RSS unchanged, since
    one image at a time is live). Process-wide, so only pool workers (and the benchmark) call it.

    Returns:
        False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, HEAP_REUSE_BYTES)) and bool(
            libc.mallopt(m_trim_threshold, HEAP_REUSE_BYTES))
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False


def _init_worker() -> None:
    """Pool initializer: one compute thread, freed buffers reused (:func:`reuse_freed_memory`), start RSS.

    OpenCV (and any OpenMP/BLAS pool a plugin brings) starts one thread per core in every process;
    with K workers on K cores that oversubscribes the machine and costs throughput. The environment
    variables cover libraries first loaded in the worker; OpenCV is already loaded, so it is told
    directly.
    """
    global _WORKER_START_RSS_KB
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)
    reuse_freed_memory()
    _WORKER_START_RSS_KB = _peak_rss_kb()


def _peak_rss_kb() -> int | None:
    """Peak resident memory of this process in KiB (None where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _source_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar's state; an unreadable one (e.g. cut short by a crash) means "redo the image"."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _failure(task: dict[str, Any], code: str, reason: str) -> dict[str, Any]:
    """A worker's failure entry: the file, a stable code, a one-line reason (plain strings: picklable)."""
    return {"image_id": task["image_id"], "file": task["src"], "code": code, "error": fc.one_line(reason)}


def _failed_record(out_png: Path) -> Path:
    return out_png.with_name(out_png.name + FAILED_RECORD_SUFFIX)


def _job(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: one image -> PNG (+ masks) and its record; any error becomes a coded failure entry.

    Nothing escapes but Ctrl-C and ``sys.exit``: a BaseException that is not an Exception (a Rust
    decoder's panic) would otherwise end the pool, and its object may not even pickle, so only
    strings go back.
    """
    src = Path(task["src"])
    out_png = Path(task["out_png"])
    sidecar = out_png.with_name(out_png.name + ".json")
    options = PreprocessOptions(**task["options"])
    limits = DecodeLimits(**task["limits"]) if task.get("limits") is not None else None
    timings: dict[str, float] = {}
    stage = "read"
    try:
        check_file(src)  # missing, or a FIFO/folder/device: refused without opening it
        stamp = _source_stamp(src)
        if out_png.exists() and sidecar.exists():
            state = _read_sidecar(sidecar)
            if state.get("source") == stamp and state.get("options") == task["options"]:
                return {"image_id": task["image_id"], "record": state["record"], "skipped": True,
                        "masks": state.get("masks", {})}
        failed = _failed_record(out_png)
        if not task.get("retry_failed") and failed.exists():
            state = _read_sidecar(failed)
            if state.get("source") == stamp and state.get("code") in fc.FAILURE_CODES:
                return _failure(task, state["code"], f"{state.get('reason', src)} (recorded by an earlier run; "
                                "--retry-failed tries it again)")
        stage = "process"
        t0 = time.perf_counter()
        image, record = process_image(src, options, limits)
        t1 = time.perf_counter()
        stage = "write"
        write_png(out_png, image)
        timings = {"process": t1 - t0, "encode": time.perf_counter() - t1}
        stage = "mask"
        masks: dict[str, str] = {}
        for key, (mask_src, mask_out) in task.get("masks", {}).items():
            mask = read_image(mask_src)
            write_png(mask_out, record.apply(mask, interpolation="nearest"))
            masks[key] = mask_out
        stage = "write"
        # Written last and atomically: a sidecar exists only for a finished image, whole.
        write_bytes_atomic(sidecar, json.dumps({"source": stamp, "options": task["options"],
                                                "record": record.to_dict(), "masks": masks}).encode())
        failed.unlink(missing_ok=True)
        return {"image_id": task["image_id"], "record": record.to_dict(), "skipped": False,
                "masks": masks, "timings": timings, "pid": os.getpid(), "peak_rss_kb": _peak_rss_kb(),
                "start_rss_kb": _WORKER_START_RSS_KB}
    except ImageError as err:
        return _failure(task, err.code, str(err))
    except DataError as err:
        return _failure(task, _STAGE_CODES[stage], str(err))
    except MemoryError:
        return _failure(task, fc.TOO_LARGE, f"{src}: out of memory while processing the image")
    except Exception as err:  # noqa: BLE001 - one bad image (a decoder bug, cv2.error, a full disk) must not stop the batch
        return _failure(task, _STAGE_CODES[stage], f"{src}: {fc.describe_exception(err)}")
    except BaseException as err:  # noqa: BLE001 - a panic outside the decode step
        if fc.is_interrupt(err):
            raise
        return _failure(task, fc.DECODE_PANIC if stage == "process" else fc.PROCESS_ERROR,
                        f"{src}: {fc.describe_exception(err)}")


#: The code of an uncoded error, by the step of :func:`_job` that raised it.
_STAGE_CODES: dict[str, str] = {"read": fc.PROCESS_ERROR, "process": fc.PROCESS_ERROR, "write": fc.WRITE_ERROR,
                                "mask": fc.MASK_ERROR}


def _alone_main(task: dict[str, Any], conn: Any) -> None:
    """Child process of :func:`_run_alone`: one image, its result sent back through ``conn``."""
    _init_worker()
    conn.send(_job(task))
    conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _run_alone(task: dict[str, Any], ctx: Any, timeout: float | None = None) -> dict[str, Any]:
    """Process one image in a process of its own: if that process dies or hangs, this file is the cause.

    The death (or a run over ``timeout`` seconds, after which the process is killed) is recorded next
    to the output (``<png>.failed.json``, with the source's size and mtime) so that a rerun skips the
    file instead of crashing or hanging on it again; ``--retry-failed`` (``retry_failed=True``) or a
    changed file tries it again.
    """
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_alone_main, args=(task, send), daemon=True)
    proc.start()
    send.close()
    timed_out = False
    try:
        if receive.poll(timeout):
            result: dict[str, Any] | None = receive.recv()
        else:
            result, timed_out = None, True
            proc.kill()
    except (EOFError, OSError):
        result = None
    finally:
        receive.close()
        proc.join()
    if result is not None:
        return result
    if timed_out:
        code, reason = fc.DECODE_TIMEOUT, (f"{task['src']}: still running after {timeout:g} s on this file alone "
                                           "(a decoder that hangs); the worker was killed")
    else:
        code, reason = fc.DECODE_CRASH, (f"{task['src']}: the worker process died on this file alone "
                                         f"({_death(proc.exitcode)}): a native crash in a decoder, or out of memory")
    out_png = Path(task["out_png"])
    try:
        record = {"source": _source_stamp(Path(task["src"])), "code": code, "reason": reason}
        out_png.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(_failed_record(out_png), json.dumps(record).encode())
    except OSError as err:
        log.warning("cannot record the failure of %s: %s", task["src"], err)
    return _failure(task, code, reason)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes (one of them hangs in native code and would never return).

    ``ProcessPoolExecutor`` has no public way to do this before Python 3.14 (``kill_workers``), so
    this reads its process table; a later Python's method is used when there.
    """
    kill = getattr(pool, "kill_workers", None)
    if callable(kill):
        kill()
        return
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.kill()


def _run_pool(pending: deque[dict[str, Any]], workers: int, ctx: Any,
              emit: Callable[[dict[str, Any]], None], timeout: float | None = None) -> list[dict[str, Any]]:
    """Run ``pending`` on a pool until it is empty or the pool breaks; returns the suspects of a break.

    At most ``2 * workers`` images are in flight (enough to keep every worker fed), so when a
    worker dies only those are suspects: the rest of the batch was never sent and stays clean.
    When no image finishes for ``timeout`` seconds, every running image has run that long: the
    workers are killed and the images in flight become suspects too.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    inflight: dict[Future[dict[str, Any]], dict[str, Any]] = {}
    suspects: list[dict[str, Any]] = []
    broken = False
    try:
        while pending or inflight:
            while not broken and pending and len(inflight) < 2 * workers:
                task = pending.popleft()
                try:
                    inflight[pool.submit(_job, task)] = task
                except BrokenProcessPool:
                    pending.appendleft(task)
                    broken = True
            if not inflight:
                break
            done, _ = wait(inflight, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:  # nothing finished for `timeout` s: a worker hangs
                log.warning("no image finished for %g s; killing the workers", timeout)
                _kill_workers(pool)
                suspects.extend(inflight.values())
                inflight.clear()
                broken = True
                break
            for future in done:
                task = inflight.pop(future)
                try:
                    emit(future.result())
                except BrokenProcessPool:
                    suspects.append(task)
                    broken = True
                except Exception as err:  # noqa: BLE001 - e.g. a result that failed to pickle
                    emit(_failure(task, fc.PROCESS_ERROR, f"{task['src']}: {fc.describe_exception(err)}"))
            if broken and not inflight:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return suspects


def _run_tasks(tasks: list[dict[str, Any]], workers: int, isolate: bool,
               emit: Callable[[dict[str, Any]], None], timeout: float | None = None) -> None:
    """Every task once through ``emit``: in this process, or in pools that survive a native crash.

    When a pool breaks (a worker killed by a signal or the OOM killer, or hanging past ``timeout``),
    its in-flight images are rerun one per process (:func:`_run_alone`): the guilty file fails as
    ``DECODE_CRASH`` (or ``DECODE_TIMEOUT``), the innocent ones are processed, and a fresh pool
    takes the rest of the batch.
    """
    if not isolate:
        for task in tasks:
            emit(_job(task))
        return
    ctx = _pool_context()
    pending = deque(tasks)
    while pending:
        suspects = _run_pool(pending, workers, ctx, emit, timeout)
        if suspects:
            log.warning("a worker process died or hung; rerunning its %d image(s) one per process", len(suspects))
        for task in suspects:
            emit(_run_alone(task, ctx, timeout))


@dataclass
class PreprocessResult:
    """What a run did. ``manifest`` is the written manifest (or shard part) path."""

    manifest: Path
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: int = 1
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: The failure code of each entry of ``failures`` (same order).
    codes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = (self.processed / self.seconds) if self.seconds > 0 else 0.0
        return (f"{self.processed} processed, {self.skipped} skipped (up to date), {self.failed} failed "
                f"in {self.seconds:.1f} s ({rate:.2f} images/s, {self.workers} "
                f"worker{'s' if self.workers != 1 else ''}) -> {self.manifest}")

    @property
    def by_code(self) -> dict[str, int]:
        """Failures per code, most frequent first."""
        counts: dict[str, int] = {}
        for code in self.codes:
            counts[code] = counts.get(code, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def failure_table(self) -> str:
        """The failures grouped by code, one line per code with its meaning ('' when none failed)."""
        return format_failure_table(self.by_code)


def format_failure_table(by_code: dict[str, int]) -> str:
    """``code  count  message`` lines for a batch's failures per code."""
    if not by_code:
        return ""
    width = max(len(code) for code in by_code)
    lines = [f"failures by code ({sum(by_code.values())}):"]
    for code, n in by_code.items():
        message = fc.FAILURE_CODES[code].message if code in fc.FAILURE_CODES else ""
        lines.append(f"  {code:<{width}}  {n:>6}  {message}")
    return "\n".join(lines)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise DataError(f"output folder {out} is not writable ({err})") from err


def load_source(source: str | Path, adapter: str | None = None) -> Bundle:
    """A bundle from a manifest file/folder, or from an adapter source (named or detected)."""
    from mammoclip.data.adapters import build_bundle

    source = Path(source)
    if not source.exists():
        raise DataError(f"input not found: {source}")
    if adapter is None and (source.is_file() and source.suffix in (".csv", ".parquet")
                            and source.name.startswith("manifest") or (source / MANIFEST_FILE).exists()):
        return load_bundle(source)
    return build_bundle(source, adapter=adapter)


def _part(name: str, shard: tuple[int, int] | None) -> str:
    if shard is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.part-{shard[0]}.{ext}"


def _tasks(bundle: Bundle, out: Path, options: PreprocessOptions, limits: DecodeLimits | None = DEFAULT_LIMITS,
           retry_failed: bool = False) -> Iterator[dict[str, Any]]:
    masks_by_image: dict[str, list[tuple[int, str]]] = {}
    if "mask_path" in bundle.boxes.columns:
        for idx, (iid, mp) in enumerate(zip(bundle.boxes["image_id"], bundle.boxes["mask_path"], strict=True)):
            if isinstance(mp, str) and mp:
                masks_by_image.setdefault(str(iid), []).append((idx, mp))
    opts = json.loads(json.dumps(asdict(options)))  # as the sidecar stores it (lists, not tuples)
    if opts.get("j2k_reduce") == 0:
        del opts["j2k_reduce"]  # the default: sidecars written before the option existed still match
    for row in bundle.images.itertuples(index=False):
        iid = str(row.image_id)
        rel = Path("images") / _safe(str(row.patient_id)) / f"{_safe(iid)}.png"
        masks = {str(idx): (str(bundle.abspath(mp)), str(out / "masks" / _safe(iid) / f"{idx}.png"))
                 for idx, mp in masks_by_image.get(iid, [])}
        yield {"image_id": iid, "src": str(bundle.abspath(str(row.path))), "out_png": str(out / rel),
               "rel": str(rel), "options": opts, "masks": masks,
               "limits": asdict(limits) if limits is not None else None,
               "retry_failed": retry_failed}


#: Seconds one image may take in a worker before it is killed (``preprocess(timeout=...)``,
#: ``--timeout``): the largest real mammograms take a few seconds, so a file still running after ten
#: minutes is a decoder that hangs.
DEFAULT_IMAGE_TIMEOUT: float = 600.0


#: Images per worker below which :func:`auto_workers` adds no further process: starting a pool
#: costs ~1 s (the forkserver imports OpenCV, pydicom and scipy once), the time of ~25 uncompressed
#: or ~2 JPEG 2000 images, so a small batch runs faster in this process.
MIN_IMAGES_PER_WORKER: int = 8


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cluster job's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows: no affinity API
        return max(1, os.cpu_count() or 1)


def auto_workers(n_images: int, cores: int | None = None) -> int:
    """Worker processes for ``n_images``: one per usable core, fewer for small batches.

    Each worker runs one thread (:func:`_init_worker`), so one worker per core uses the machine
    without oversubscribing it (2 workers on 2 cores: 1.6-1.9x one, ``bench/preprocess.py``). Below
    :data:`MIN_IMAGES_PER_WORKER` images per worker the pool start would cost more than it saves.
    """
    cores = usable_cores() if cores is None else cores
    return max(1, min(cores, n_images // MIN_IMAGES_PER_WORKER))


def _safe(name: str) -> str:
    """A file name for an id: injective, so two ids never share one output file.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; whenever that (or an empty, ``.`` or
    ``..`` id) changed the name, a short hash of the original id is appended, so ``a/b`` and
    ``a_b`` map to ``a_b-<hash>`` and ``a_b``.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if safe == name and name not in ("", ".", ".."):
        return name
    return f"{safe or '_'}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def preprocess(
    source: str | Path | Bundle,
    out: str | Path,
    options: PreprocessOptions | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    adapter: str | None = None,
    progress: bool | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    limits: DecodeLimits | None = DEFAULT_LIMITS,
    retry_failed: bool = False,
    isolate: bool | None = None,
    timeout: float | None = DEFAULT_IMAGE_TIMEOUT,
) -> PreprocessResult:
    """Preprocess every image of a DICOM manifest into ``out``.

    Args:
        source: A manifest (file or folder), an adapter source folder, or a :class:`Bundle`.
        out: Output folder: ``images/``, ``masks/``, ``manifest.csv``, ``boxes.csv`` (processed
            space), ``reports.csv``, ``failures.csv``, ``summary.json``.
        options: Output format; defaults to :class:`PreprocessOptions`.
        workers: Worker processes; 0 picks :func:`auto_workers` (one per usable core, one for
            small batches).
        shard: ``(i, N)``: only rows ``i, i+N, ...``; outputs get a ``.part-i`` suffix.
        adapter: Adapter name for a non-manifest source (detected when omitted).
        progress: a bar on a terminal, bounded progress lines when stderr is a log (``False``: none).
        on_result: Called with each worker result (used by the benchmark).
        limits: Size and decompression budget checked on each header before decoding
            (``None``: unbounded); a file over it fails as ``TOO_LARGE``.
        retry_failed: Try again the files an earlier run recorded as crashing its worker
            (``DECODE_CRASH``); by default they are skipped and listed again.
        isolate: With one worker, decode in a child process anyway, so that a native crash fails
            one image, not the caller (``mammoclip preprocess`` does). The default (``None``)
            runs ``workers=1`` in this process, where a crash ends the caller: a child process
            needs the ``if __name__ == "__main__":`` guard in a calling script, which a library
            call should not demand silently. More than one worker always runs in child processes.
        timeout: Seconds one image may take in a child process before its worker is killed and the
            file fails as ``DECODE_TIMEOUT`` (recorded like a crash); ``None``: no limit. Only
            images decoded in child processes can be stopped.

    Returns:
        Counts, time, workers used and failures.

    Raises:
        DataError: empty input, unreadable source, output folder not writable.
        ConfigError: negative ``workers``.
    """
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: one per core), got {workers}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout must be > 0 seconds (or None: no limit), got {timeout}")
    options = options or PreprocessOptions()
    out = Path(out)
    bundle = source if isinstance(source, Bundle) else load_source(source, adapter)
    if len(bundle.images) == 0:
        raise DataError(f"no images in {source}")
    # Files the adapter could not list (not DICOM, not MG, ...; from the adapter or the left-out list
    # saved next to a built manifest) are failures of this run too; a sharded run reports them once,
    # in shard 0.
    left_out: list[tuple[str, str, str]] = []
    if shard is None or shard[0] == 0:
        left_out = [(str(entry[0]), fc.LEFT_OUT, fc.one_line(str(entry[-1])))
                    for entry in bundle.images.attrs.get("skipped", []) if len(entry) >= 2]
    _check_writable(out)
    images = bundle.images.reset_index(drop=True)
    if shard is not None:
        images = images.iloc[shard[0]::shard[1]].reset_index(drop=True)
    bundle = Bundle(images, bundle.boxes, bundle.reports, bundle.root)

    tasks = list(_tasks(bundle, out, options, limits, retry_failed))
    workers = auto_workers(len(tasks)) if workers == 0 else workers
    rel_by_id = {t["image_id"]: t["rel"] for t in tasks}
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    bar = progress_bar(len(tasks), "preprocess", "img", enabled=progress)

    def collect(res: dict[str, Any]) -> None:
        results[res["image_id"]] = res
        if on_result is not None:
            on_result(res)
        bar.update(1)

    try:
        _run_tasks(tasks, workers, bool(isolate) or workers > 1, collect, timeout)
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    ok = [iid for iid in images["image_id"].astype(str) if "record" in results.get(iid, {})]
    coded = left_out + [(results[t["image_id"]]["file"], results[t["image_id"]]["code"], results[t["image_id"]]["error"])
                        for t in tasks if "error" in results.get(t["image_id"], {})]
    failures = [(file, reason) for file, _, reason in coded]
    rows = images[images["image_id"].astype(str).isin(set(ok))].copy()
    records = pd.DataFrame([results[iid]["record"] for iid in rows["image_id"].astype(str)],
                           columns=list(TRANSFORM_COLUMNS), index=rows.index)
    rows = rows.drop(columns=[c for c in TRANSFORM_COLUMNS if c in rows.columns]).join(records)
    rows["path"] = [rel_by_id[str(i)] for i in rows["image_id"]]

    boxes = _map_boxes(bundle.boxes, rows, results, out)
    manifest_path = write_manifest(rows, out / _part(MANIFEST_FILE, shard))
    write_boxes(boxes, out / _part("boxes.csv", shard))
    write_reports(bundle.reports, out / _part("reports.csv", shard))
    pd.DataFrame(coded, columns=list(FAILURE_COLUMNS)).to_csv(out / _part(FAILURES_FILE, shard), index=False)
    result = PreprocessResult(
        manifest=manifest_path,
        processed=sum(1 for r in results.values() if r.get("skipped") is False),
        skipped=sum(1 for r in results.values() if r.get("skipped") is True),
        failed=len(failures), seconds=seconds, workers=workers, failures=failures,
        codes=[code for _, code, _ in coded],
    )
    if result.failed:
        log.warning("%s", result.failure_table())
    (out / _part(SUMMARY_FILE, shard)).write_text(json.dumps(
        {"processed": result.processed, "skipped": result.skipped, "failed": result.failed,
         "failures_by_code": result.by_code,
         "seconds": round(seconds, 3), "workers": workers, "options": asdict(options),
         "shard": shard, "orientation": _orientation_counts(results),
         "j2k_reduce": _reduce_counts(results)}, indent=2))
    return result


def _reduce_counts(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Images per JPEG 2000 reduce level of their record ("0": full decode, every other syntax included)."""
    counts: dict[str, int] = {}
    for res in results.values():
        if "record" in res:
            key = str(int(res["record"].get("reduce", 0) or 0))
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _orientation_counts(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Images per orientation source, and how many the header decided against the pixel estimate."""
    records = [r["record"] for r in results.values() if "record" in r]
    counts = {src: sum(1 for r in records if r.get("orientation_source", "pixels") == src)
              for src in ORIENTATION_SOURCES}
    counts["disagrees"] = sum(1 for r in records if int(r.get("orientation_disagrees", 0)))
    return counts


def _map_boxes(boxes: pd.DataFrame, rows: pd.DataFrame, results: dict[str, dict[str, Any]], out: Path
               ) -> pd.DataFrame:
    """Boxes of the processed images, mapped to processed space; mask paths point at mapped masks."""
    if len(boxes) == 0:
        return empty_boxes()
    kept = set(rows["image_id"].astype(str))
    boxes = boxes.copy()
    boxes["image_id"] = boxes["image_id"].astype(str)
    mask_out: list[Any] = [None] * len(boxes)
    coords = boxes[["xmin", "ymin", "xmax", "ymax"]].to_numpy(dtype=np.float64, copy=True)
    for pos, (iid, space) in enumerate(zip(boxes["image_id"], boxes["space"], strict=True)):
        res = results.get(iid)
        if iid not in kept or res is None:
            continue
        if space == "original":
            coords[pos] = TransformRecord.from_row(res["record"]).map_boxes(coords[pos])[0]
        mapped = res.get("masks", {}).get(str(boxes.index[pos]))
        if mapped:
            mask_out[pos] = os.path.relpath(mapped, out)
    boxes[["xmin", "ymin", "xmax", "ymax"]] = coords
    boxes["space"] = "processed"
    if "mask_path" in boxes.columns:
        boxes["mask_path"] = mask_out
    boxes = boxes[boxes["image_id"].isin(kept)].reset_index(drop=True)
    return boxes[list(BOX_COLUMNS) + [c for c in boxes.columns if c not in BOX_COLUMNS]]


def merge_shards(out: str | Path) -> Path:
    """Join ``*.part-i.csv`` files of a sharded run into ``manifest.csv``, ``boxes.csv``, ...

    Each shard's ``summary.part-i.json`` records ``(i, N)``: the merge refuses to run while a shard
    of the N is missing (or was run with another N), so a cluster job that lost a shard cannot
    produce a silently short manifest. The summaries are joined into ``summary.json``.

    Raises:
        DataError: no parts found, a shard missing, or shards of different runs mixed.
    """
    out = Path(out)
    parts = sorted(out.glob("manifest.part-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not parts:
        raise DataError(f"{out}: no manifest.part-*.csv to merge")
    summaries = {int(p.stem.rsplit("-", 1)[1]): json.loads(p.read_text()) for p in out.glob("summary.part-*.json")}
    totals = {s["shard"][1] for s in summaries.values() if s.get("shard")}
    if len(totals) != 1:
        raise DataError(f"{out}: shard summaries disagree on the number of shards ({sorted(totals)}) or are "
                        "missing; merge only the parts of one run")
    n = totals.pop()
    have = {int(p.stem.rsplit("-", 1)[1]) for p in parts} & set(summaries)
    missing = sorted(set(range(n)) - have)
    if missing:
        raise DataError(f"{out}: cannot merge, shard(s) {', '.join(f'{i}/{n}' for i in missing)} not finished "
                        f"(no manifest.part-i.csv and summary.part-i.json); run them, then merge again")
    for name in (MANIFEST_FILE, "boxes.csv", FAILURES_FILE):
        stem = name.rsplit(".", 1)[0]
        frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in
                  sorted(out.glob(f"{stem}.part-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))]
        frames = [f for f in frames if len(f.columns)]
        merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if name == MANIFEST_FILE:
            write_manifest(merged.replace("", np.nan), out / name)
        else:
            merged.to_csv(out / name, index=False)
    reports = sorted(out.glob("reports.part-*.csv"))
    if reports:
        frame = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in reports], ignore_index=True)
        write_reports(frame.drop_duplicates(subset=["report_id"]), out / "reports.csv")
    shards = [summaries[i] for i in range(n)]
    (out / SUMMARY_FILE).write_text(json.dumps({
        **{key: sum(int(s[key]) for s in shards) for key in ("processed", "skipped", "failed")},
        "seconds": round(max(float(s["seconds"]) for s in shards), 3),  # shards run side by side
        "failures_by_code": _sum_counts(s.get("failures_by_code", {}) for s in shards),
        "shard_seconds": [s["seconds"] for s in shards], "options": shards[0]["options"], "shards": n,
    }, indent=2))
    return out / MANIFEST_FILE


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + int(n)
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))
