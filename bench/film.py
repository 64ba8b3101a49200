"""Breast crops on film-style synthetic images: markers left in the crop, breast pixels cut, speed.

Renders N film-style images (:func:`mammoclip.synthetic.film.film_image`: burned-in labels, lead
markers, film edges and scanner strips around a breast, with ground-truth masks) and segments each
with the current :func:`mammoclip.imaging.breast.segment_breast` and with the version of
``src/mammoclip/imaging/breast.py`` at a git revision (``--before``), so both run on the same
images on the same machine. Per method it reports

* the share of crops that contain any marker pixel (target 0),
* the share of artefacts with a pixel in the crop, per gap to the breast box and per kind,
* the share of breast pixels outside the crop, over all images and the worst image (target < 1 %),
* segment_breast CPU time per image (the methods alternate image by image; the fastest of
  ``--repeats`` runs counts, so that load from other jobs mostly drops out).

It also compares the crop boxes of the standard (non-film) synthetic images, which the docs'
numbers depend on, and times them apart: those without a burned-in marker (the path a detector
image takes) and those with one. Prints the tables and writes ``bench/out/film.json``.

With ``--e2e N`` it also times what a user of ``mammoclip preprocess`` feels: N film-style images
written as DICOMs (MONOCHROME2, 16-bit, uncompressed, no VOI: a digitized film), each decoded,
segmented, rendered to 1520 x 912 and written as a PNG (``process_image`` + ``write_png``, the work
of one preprocessing worker per image), by the working tree and by the ``--before`` revision checked
out in a git worktree (``--e2e-tree``, or a temporary one). Each run is its own Python process with
one thread; runs alternate (before, after, before, after, ...: ``--e2e-rounds`` each) so that load
from other jobs hits both alike; a run reports the median over its images of the wall and CPU ms
per image (the first image is processed once untimed: lazy imports), and the table shows the median
over rounds.

    python bench/film.py --images 200 --before 718581f
    python bench/film.py --images 200 --e2e 40 --e2e-rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_before(rev: str) -> Any:
    """``mammoclip.imaging.breast`` as it was at git revision ``rev`` (a separate module object)."""
    src = subprocess.run(["git", "show", f"{rev}:src/mammoclip/imaging/breast.py"], cwd=ROOT,
                         capture_output=True, check=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "breast_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("breast_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["breast_before"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def time_methods(segments: dict[str, Callable[[np.ndarray], Any]], images: list[np.ndarray],
                 repeats: int) -> dict[str, float]:
    """Mean over images of the fastest of ``repeats`` runs, per method, in CPU ms of this thread."""
    best: dict[str, list[float]] = {name: [] for name in segments}
    for image in images:
        runs: dict[str, list[float]] = {name: [] for name in segments}
        for _ in range(repeats):
            for name, segment in segments.items():
                t0 = time.thread_time()
                segment(image)
                runs[name].append(time.thread_time() - t0)
        for name in segments:
            best[name].append(min(runs[name]))
    return {name: 1000 * float(np.mean(v)) for name, v in best.items()}


def measure(segment: Callable[[np.ndarray], Any], images: list[Any]) -> dict[str, Any]:
    """Marker and breast-loss figures of one method, overall, per gap and per kind of artefact."""
    with_marker, lost, worst, total = 0, 0, 0.0, 0
    per_gap: dict[str, list[int]] = {}
    per_kind: dict[str, list[int]] = {}
    for f in images:
        seg = segment(f.image)
        box = (slice(seg.y0, seg.y1), slice(seg.x0, seg.x1))
        with_marker += int(f.markers[box].any())
        inside = int(f.breast[box].sum())
        n = int(f.breast.sum())
        lost += n - inside
        total += n
        worst = max(worst, (n - inside) / n)
        crop = np.zeros(f.markers.shape, bool)
        crop[box] = True
        w = f.image.shape[1]
        for (kind, gap), (x0, y0, x1, y1) in zip(f.kinds, f.boxes):
            truth = f.markers[y0:y1, x0:x1]
            if not truth.any():  # a dark film edge: background, nothing to keep out
                continue
            hit = int((crop[y0:y1, x0:x1] & truth).any())
            for table, key in ((per_gap, f"{100 * gap / w:.1f} %"), (per_kind, kind)):
                table.setdefault(key, [0, 0])
                table[key][0] += hit
                table[key][1] += 1
    return {"marker_in_crop": with_marker / len(images), "breast_lost": lost / total,
            "breast_lost_worst": worst, "per_gap": per_gap, "per_kind": per_kind}


def has_artefact(module: Any, image: np.ndarray) -> bool:
    """Whether the current segmentation finds a saturated artefact in ``image`` (its film path)."""
    h, w = image.shape
    f = min(1.0, module.SEGMENT_MAX_SIDE / max(h, w))
    small = module.resize_area(module.map_codes(image, None), max(1, round(w * f)), max(1, round(h * f)))
    plateau = module.saturated_plateau(small)
    return plateau is not None and bool(module.saturated_artefacts(small, module._foreground(small), plateau).any())


#: One preprocessing run in its own process: ``argv`` = DICOM folder, PNG folder, result JSON, H, W.
_E2E_RUN = """
import json, sys, time
from pathlib import Path
import cv2
cv2.setNumThreads(1)
import mammoclip
from mammoclip.data.preprocess import PreprocessOptions, process_image
from mammoclip.imaging.imageio import write_png
src, dst, res, h, w = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
options = PreprocessOptions(size=(h, w))
files = sorted(Path(src).glob("*.dcm"))
process_image(files[0], options)
wall, cpu = [], []
for path in files:
    t0, c0 = time.perf_counter(), time.thread_time()
    image, _ = process_image(path, options)
    write_png(dst / (path.stem + ".png"), image)
    wall.append(time.perf_counter() - t0)
    cpu.append(time.thread_time() - c0)
json.dump({"module": mammoclip.__file__, "wall": wall, "cpu": cpu}, open(res, "w"))
"""


def write_film_dicom(path: Path, image: np.ndarray) -> None:
    """A digitized film as a DICOM: MONOCHROME2 16-bit codes, uncompressed, no VOI, no orientation."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MG", "FILM"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def time_preprocess(images: list[np.ndarray], before: str, tree: str | None, rounds: int,
                    size: tuple[int, int]) -> dict[str, Any]:
    """Median wall and CPU ms per image of decode + segment + render + PNG, before and after."""
    results: dict[str, dict[str, list[float]]] = {"before": {"wall": [], "cpu": []}, "after": {"wall": [], "cpu": []}}
    modules: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dicoms = tmp / "dicom"
        dicoms.mkdir()
        for i, image in enumerate(images):
            write_film_dicom(dicoms / f"film{i:04d}.dcm", image)
        old_tree = Path(tree) if tree else tmp / "before"
        if not tree:
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), before], cwd=ROOT, check=True)
        try:
            sources = {"before": old_tree / "src", "after": ROOT / "src"}
            for r in range(rounds):
                for name, src in sources.items():
                    out = tmp / f"png-{name}-{r}"
                    out.mkdir()
                    res = tmp / f"{name}-{r}.json"
                    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
                    subprocess.run([sys.executable, "-c", _E2E_RUN, str(dicoms), str(out), str(res), *map(str, size)],
                                   env=env, check=True)
                    run = json.loads(res.read_text())
                    modules[name] = run["module"]
                    for key in ("wall", "cpu"):
                        results[name][key].append(1000 * float(np.median(run[key])))
        finally:
            if not tree:
                subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
    for name, src in (("before", str(old_tree)), ("after", str(ROOT))):
        if not modules[name].startswith(src):
            raise RuntimeError(f"bench/film.py: the {name} run imported {modules[name]}, not the tree {src}")
    return {name: {"wall_ms": float(np.median(v["wall"])), "cpu_ms": float(np.median(v["cpu"])),
                   "wall_rounds": v["wall"], "cpu_rounds": v["cpu"]} for name, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="1520x912", help="HxW of the film images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", default="718581f", help="git revision of the 'before' segmentation")
    parser.add_argument("--standard", type=int, default=50, help="standard synthetic images to compare")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and method")
    parser.add_argument("--e2e", type=int, default=0,
                        help="also time preprocessing end to end (decode + segment + render + PNG) on this many "
                             "film DICOMs, before vs after (0: skip)")
    parser.add_argument("--e2e-rounds", type=int, default=2, help="alternating runs per method for --e2e")
    parser.add_argument("--e2e-tree", default=None,
                        help="a checkout of --before (e.g. `git worktree add /tmp/old 718581f`); default: a temporary one")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "film.json"))
    args = parser.parse_args(argv)

    import cv2

    from mammoclip.imaging import breast
    from mammoclip.synthetic.film import film_image

    cv2.setNumThreads(1)
    h, w = (int(v) for v in args.size.lower().split("x"))
    images = [film_image(args.seed, i, (h, w)) for i in range(args.images)]
    before = load_before(args.before)
    rows = {"before": measure(before.segment_breast, images), "after": measure(breast.segment_breast, images)}
    segments = {"before": before.segment_breast, "after": breast.segment_breast}
    film_ms = time_methods(segments, [f.image for f in images], args.repeats)

    same, changed = 0, []
    plain: list[np.ndarray] = []
    marked: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        from mammoclip.imaging.imageio import read_image
        from mammoclip.synthetic import generate_cohort

        n_pat = max(1, (args.standard + 3) // 4)
        generate_cohort(Path(tmp) / "c", n_patients=n_pat, seed=args.seed, image_size=(h, w), progress=False)
        for png in sorted((Path(tmp) / "c" / "images").rglob("*.png"))[:args.standard]:
            img = read_image(png)
            a, b = before.segment_breast(img), breast.segment_breast(img)
            if (a.x0, a.y0, a.x1, a.y1, a.chest_wall) == (b.x0, b.y0, b.x1, b.y1, b.chest_wall):
                same += 1
            else:
                changed.append(f"{png.name}: {(a.x0, a.y0, a.x1, a.y1)} -> {(b.x0, b.y0, b.x1, b.y1)}")
            (marked if has_artefact(breast, img) else plain).append(img)
    plain_ms = time_methods(segments, plain, args.repeats) if plain else {}
    marked_ms = time_methods(segments, marked, args.repeats) if marked else {}
    n_std = len(plain) + len(marked)
    load_start = os.getloadavg()[0]
    e2e = (time_preprocess([f.image for f in images[:args.e2e]], args.before, args.e2e_tree, args.e2e_rounds, (h, w))
           if args.e2e > 0 else {})

    cores = len(os.sched_getaffinity(0))
    print(f"{args.images} film-style images {h}x{w}, seed {args.seed}; before = {args.before}; "
          f"{platform.processor() or platform.machine()}, {cores} cores, load average {os.getloadavg()[0]:.1f}")
    e2e_head = f" {'preprocess ms/image (wall, CPU)':>32}" if e2e else ""
    print(f"{'method':8} {'marker in crop':>15} {'breast lost':>12} {'worst image':>12} {'segment CPU ms':>15}"
          + e2e_head)
    for name, r in rows.items():
        r["ms_per_image"] = film_ms[name]
        cell = f" {e2e[name]['wall_ms']:20.1f}, {e2e[name]['cpu_ms']:9.1f}" if e2e else ""
        print(f"{name:8} {100 * r['marker_in_crop']:14.1f}% {100 * r['breast_lost']:11.3f}% "
              f"{100 * r['breast_lost_worst']:11.2f}% {film_ms[name]:15.2f}" + cell)
    print(f"segmentation after vs before: {100 * (film_ms['after'] / film_ms['before'] - 1):+.1f} %")
    if e2e:
        for key, label in (("wall_ms", "wall"), ("cpu_ms", "CPU")):
            print(f"preprocess per image ({label}, median of {args.e2e_rounds} alternating runs of {args.e2e} "
                  f"DICOMs): {e2e['before'][key]:.1f} -> {e2e['after'][key]:.1f} ms "
                  f"({100 * (e2e['after'][key] / e2e['before'][key] - 1):+.1f} %)")
        print(f"load average {load_start:.1f} before the preprocess runs, {os.getloadavg()[0]:.1f} after")
    for table, title in (("per_gap", "gap to the breast box (% of width)"), ("per_kind", "kind")):
        print(f"\nartefacts with a pixel in the crop, by {title}: before / after")
        keys = sorted(rows["before"][table], key=lambda k: (float(k.split()[0]), "") if table == "per_gap" else (0, k))
        for key in keys:
            (hb, n), (ha, _) = rows["before"][table][key], rows["after"][table][key]
            print(f"  {key:>14}: {hb:4d} / {ha:4d} of {n:4d}   ({100 * hb / n:5.1f} % -> {100 * ha / n:5.1f} %)")
    print(f"\nstandard synthetic images: {same}/{n_std} crop boxes and chest-wall sides identical")
    for line in changed:
        print(f"  changed {line}")
    for label, ms, group in (("without", plain_ms, plain), ("with", marked_ms, marked)):
        if ms:
            print(f"  {len(group)} {label} a burned-in marker: CPU ms/image before {ms['before']:.2f}, "
                  f"after {ms['after']:.2f} ({100 * (ms['after'] / ms['before'] - 1):+.1f} %)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "images": args.images, "size": [h, w], "seed": args.seed, "before": args.before,
        "machine": platform.platform(), "cores": cores, "python": sys.version.split()[0],
        "standard_identical": [same, n_std], "standard_changed": changed,
        "standard_ms": {"plain": [len(plain), plain_ms], "marker": [len(marked), marked_ms]},
        "preprocess": {"images": args.e2e, "rounds": args.e2e_rounds, **e2e},
        "load_average_end": os.getloadavg()[0],
        **rows,
    }, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
