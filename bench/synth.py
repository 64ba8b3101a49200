"""Benchmark of the synthetic cohort generator: images/s at 1520x912 with 1 and 2 workers, peak memory.

Target (issue 2): a 200-patient cohort (800 images) at 1520x912 in under 2 minutes on 2 cores.
Prints a table and writes ``bench/out/synth.json``. ``--patients`` sets the cohort size per run
(default 24, i.e. 96 images; the 200-patient time is extrapolated from the measured rate).

    python bench/synth.py [--patients 24] [--size 1520x912] [--workers 1 2] [--fmt png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from mammoclip.synthetic import generate_cohort


def _children_peak_mb() -> float:
    """Peak resident memory of finished worker processes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(patients: int, size: tuple[int, int], workers: int, fmt: str) -> dict[str, float]:
    """Generate one cohort in a temporary folder and time it."""
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        generate_cohort(Path(tmp) / "c", patients, seed=0, image_size=size, fmt=fmt, workers=workers,
                        progress=False)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    images = 4 * patients
    return {
        "workers": workers, "patients": patients, "images": images, "seconds": round(elapsed, 2),
        "images_per_s": round(images / elapsed, 2),
        "est_200_patients_s": round(800 / (images / elapsed), 1),
        # CPU seconds are what a shared machine cannot distort: the 2-core estimate assumes both
        # cores are free and the work splits evenly over the workers.
        "cpu_s_per_image": round(cpu / images, 3),
        "est_200_patients_2_free_cores_s": round(800 * cpu / images / min(2, workers), 1),
        "python_heap_peak_mb": round(traced_peak / 2**20, 1),
        "process_rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "worker_rss_peak_mb": round(_children_peak_mb(), 1),
        "disk_mb": round(disk / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--size", default="1520x912", help="HxW")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fmt", choices=("png", "dicom"), default="png")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "synth.json")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    rows = [run(args.patients, size, w, args.fmt) for w in args.workers]
    cols = list(rows[0])
    print(f"synthetic cohort, {args.fmt}, {size[0]}x{size[1]}, cpu_count={os.cpu_count()}")
    print(" | ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>18}" for c in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "synth", "size": list(size), "fmt": args.fmt, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "target": "800 images at 1520x912 in < 120 s on 2 cores",
        "runs": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
