"""The seeded synthetic screening cohort: images, masks, boxes, reports, manifest.

Each patient has one screening study: two breasts x (CC, MLO). Everything a patient gets is drawn
from its own ``np.random.Generator`` seeded with ``(seed, patient index)``, so a cohort does not
depend on the number of workers, and the first N patients of a larger cohort are the same as those
of a smaller one with the same seed.

Output folder::

    manifest.csv   one row per image (mammoclip.data.manifest schema, source "synthetic")
    boxes.csv      one row per finding per view (label, box, mask_path, finding_id, descriptors)
    reports.csv    one row per study (report_id, findings, impression, history, text)
    cohort.json    generator version, settings and counts
    images/<patient_id>/<image_id>.png|.dcm
    masks/<image_id>__<finding_id>.png
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.constants import DENSITIES, PAPER_IMAGE_SIZE
from mammoclip.errors import ConfigError, DataError
from mammoclip.progress import progress_bar
from mammoclip.synthetic.acquisition import acquire, sample_profile, to_display, window
from mammoclip.synthetic.anatomy import (
    build_view,
    pixel_spacing,
    sample_breast_shape,
    sample_patient_shape,
)
from mammoclip.synthetic.lesions import (
    DEFAULT_PREVALENCE,
    Finding,
    breast_birads,
    place,
    render,
    sample_findings,
)
from mammoclip.synthetic.reports import write_report
from mammoclip.synthetic.texture import DENSE_FRACTION, power_law_noise, render_breast

#: Bumped whenever the same settings would produce different output.
GENERATOR_VERSION = "1.0"
#: Files and folders the generator owns inside its output folder (the only things ``overwrite``
#: removes).
OWNED_PATHS: tuple[str, ...] = ("images", "masks", "manifest.csv", "boxes.csv", "reports.csv", "cohort.json")
#: Density category frequencies of a screening population (BI-RADS atlas 5th ed.: ~10/40/40/10 %).
DEFAULT_DENSITY_P: tuple[float, float, float, float] = (0.10, 0.40, 0.40, 0.10)
#: Share of studies per DICOM transfer syntax (when the encoder is available).
DEFAULT_COMPRESSION: dict[str, float] = {"none": 0.5, "rle": 0.25, "j2k": 0.25}


@dataclass(frozen=True)
class CohortConfig:
    """Settings of a synthetic cohort (everything ``cohort.json`` records)."""

    n_patients: int  # number of patients (one study, four images each)
    seed: int = 0  # the cohort seed; patient i uses Generator([seed, i])
    image_size: tuple[int, int] = PAPER_IMAGE_SIZE  # (H, W) of every image
    fmt: str = "png"  # "png" (processed 8/16-bit, boxes in processed space) or "dicom" (boxes in original space)
    png_bits: int = 8  # 8 or 16-bit PNG output
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))  # per breast
    density_p: tuple[float, float, float, float] = DEFAULT_DENSITY_P  # P(A), P(B), P(C), P(D)
    typo_rate: float = 0.01  # share of unprotected report words with a typo/abbreviation
    marker_rate: float = 0.5  # share of studies with burned-in laterality/view markers
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test, by patient
    compression: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COMPRESSION))  # DICOM only

    def __post_init__(self) -> None:
        if not isinstance(self.n_patients, (int, np.integer)) or self.n_patients <= 0:
            raise ConfigError(f"n_patients must be a positive integer, got {self.n_patients!r}")
        size = tuple(self.image_size)
        if (len(size) != 2 or not all(isinstance(s, (int, np.integer)) for s in size)
                or not (32 <= size[0] <= 8192 and 24 <= size[1] <= 8192)):
            raise ConfigError(f"image_size must be (H, W) with 32 <= H <= 8192 and 24 <= W <= 8192, got {self.image_size!r}")
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        if self.fmt not in ("png", "dicom"):
            raise ConfigError(f"fmt must be 'png' or 'dicom', got {self.fmt!r}")
        if self.png_bits not in (8, 16):
            raise ConfigError(f"png_bits must be 8 or 16, got {self.png_bits!r}")
        unknown = set(self.prevalence) - set(DEFAULT_PREVALENCE)
        if unknown or not all(0.0 <= p <= 1.0 for p in self.prevalence.values()):
            raise ConfigError(f"prevalence must map {sorted(DEFAULT_PREVALENCE)} to probabilities, got {self.prevalence}")
        # Kinds not named keep their default prevalence (set 0 to switch a kind off).
        object.__setattr__(self, "prevalence", {**DEFAULT_PREVALENCE, **self.prevalence})
        fr = tuple(self.split_fractions)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"split_fractions must be three shares (train, val, test) summing to 1, got {fr}")
        if len(self.density_p) != 4 or min(self.density_p) < 0 or abs(sum(self.density_p) - 1) > 1e-6:
            raise ConfigError(f"density_p must be four probabilities summing to 1, got {self.density_p}")
        if not 0.0 <= self.typo_rate <= 0.2:
            raise ConfigError(f"typo_rate must be in [0, 0.2], got {self.typo_rate}")
        if not 0.0 <= self.marker_rate <= 1.0:
            raise ConfigError(f"marker_rate must be in [0, 1], got {self.marker_rate}")
        if set(self.compression) - {"none", "rle", "j2k"} or sum(self.compression.values()) <= 0:
            raise ConfigError(f"compression must map none/rle/j2k to shares, got {self.compression}")

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (what makes two cohorts the same)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["density_p"] = list(self.density_p)
        d["split_fractions"] = list(self.split_fractions)
        return d


def _finding_attrs(f: Finding) -> dict[str, Any]:
    return {
        "finding_id": f.finding_id, "malignant": int(f.malignant), "size_mm": f.size_mm,
        "clock": f.clock_text, "quadrant": f.quadrant, "depth": f.depth, "dist_cm": f.dist_cm,
        "shape": f.attrs.get("shape", ""), "margin": f.attrs.get("margin", ""),
        "morphology": f.attrs.get("morphology", f.attrs.get("type", "")),
        "distribution": f.attrs.get("distribution", ""),
    }


def _marker(img: np.ndarray, text: str, mask: np.ndarray, chest_left: bool, value: int) -> bool:
    """Burn a laterality/view marker into the air opposite the chest wall; False when it does not fit."""
    import cv2

    h, w = img.shape
    scale = max(0.4, h / 1000.0)
    thick = max(1, int(round(2 * scale)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, thick)
    pad = int(0.03 * w)
    x = w - tw - pad if chest_left else pad
    for y in (pad + th, h - pad - base):
        x0, y0, x1, y1 = max(0, x - 4), max(0, y - th - 4), min(w, x + tw + 4), min(h, y + base + 4)
        if x0 < x1 and y0 < y1 and not mask[y0:y1, x0:x1].any():
            canvas = np.zeros((h, w), np.uint8)  # putText draws on 8-bit images only
            cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_DUPLEX, scale, 255, thick, cv2.LINE_8)
            img[canvas > 0] = value
            return True
    return False


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a lesion mask as a 1-bit PNG (reads back as 0/255 uint8; ~6x faster than 8-bit)."""
    import cv2

    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    if not ok:
        raise DataError(f"PNG encoding failed for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-edge box (xmin, ymin, xmax, ymax) of a mask; max is exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def make_patient(index: int, cfg: CohortConfig, out: Path) -> dict[str, Any]:
    """Generate and write one patient; returns its manifest rows, box rows and report row."""
    import cv2

    from mammoclip.imaging.imageio import write_png

    cv2.setNumThreads(1)
    rng = np.random.default_rng([cfg.seed, index])
    size = cfg.image_size
    spacing = pixel_spacing(size)
    pid, sid, rid = f"P{index:05d}", f"S{index:05d}", f"R{index:05d}"
    age = int(rng.integers(40, 76))
    density = DENSITIES[int(rng.choice(4, p=np.asarray(cfg.density_p)))]
    target = float(rng.uniform(*DENSE_FRACTION[density]))
    patient_shape = sample_patient_shape(rng)
    profile = sample_profile(rng)
    has_marker = bool(rng.random() < cfg.marker_rate)
    small = (max(16, size[0] // 8), max(16, size[1] // 8))
    shared = cv2.resize(power_law_noise(small, 3.5, rng, 0.6), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    prior_year = int(rng.integers(2015, 2023)) if rng.random() < 0.7 else None
    study_year = int(rng.integers(2023, 2026))
    ext = "dcm" if cfg.fmt == "dicom" else "png"
    space = "original" if cfg.fmt == "dicom" else "processed"
    dicom_study, compression = None, "none"
    if cfg.fmt == "dicom":
        from mammoclip.synthetic.dicom_writer import DicomStudy, synthetic_name

        # A separate stream for file identity, so that PNG and DICOM cohorts hold the same pixels.
        id_rng = np.random.default_rng([cfg.seed, index, 1])
        comp_names = sorted(cfg.compression)
        comp_p = np.asarray([cfg.compression[c] for c in comp_names], float)
        compression = comp_names[int(id_rng.choice(len(comp_names), p=comp_p / comp_p.sum()))]
        dicom_study = DicomStudy(
            patient_id=pid, patient_name=synthetic_name(id_rng), birth_date=f"{study_year - age}0101", age=age,
            study_id=sid,
            study_date=f"{study_year}{int(id_rng.integers(1, 13)):02d}{int(id_rng.integers(1, 29)):02d}",
            accession=f"A{cfg.seed % 1000:03d}{index:06d}", uid_seed=f"{cfg.seed}:{index}",
        )

    findings: dict[str, list[Finding]] = {}
    birads: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    boxes: list[dict[str, Any]] = []
    for side in ("R", "L"):
        shape = sample_breast_shape(rng, patient_shape)
        geoms = {v: build_view(shape, v, size) for v in ("CC", "MLO")}
        candidates = sample_findings(rng, side, index, 0, cfg.prevalence)
        placed = [f for f in candidates if place(f, geoms, size, rng)]
        findings[side] = placed
        birads[side] = breast_birads(placed)
        kinds = {f.kind for f in placed}
        for view, geom in geoms.items():
            fraction = float(np.clip(target + rng.normal(0, 0.01), 0.01, 0.95))
            img, dense = render_breast(geom, rng, fraction, size, shared)
            masks: list[tuple[Finding, np.ndarray]] = []
            for f in placed:
                patch = render(f, view, geom, size)
                ph, pw = patch.add.shape
                img[patch.y0:patch.y0 + ph, patch.x0:patch.x0 + pw] += patch.add
                m = np.zeros(size, bool)
                m[patch.y0:patch.y0 + ph, patch.x0:patch.x0 + pw] = patch.mask
                m &= geom.mask
                if not m.any():  # tiny images: keep at least the centre pixel so every finding has a box
                    cx, cy = f.centers[view]
                    m[min(size[0] - 1, max(0, round(cy))), min(size[1] - 1, max(0, round(cx)))] = True
                masks.append((f, m))
            img = np.where(geom.mask, img, 0.0)
            raw = acquire(img, profile, rng, 0.5 * (spacing[0] + spacing[1]))
            breast = geom.mask
            if side == "R":  # mirror: chest wall at the right edge
                raw = raw[:, ::-1]
                breast = breast[:, ::-1]
                masks = [(f, m[:, ::-1]) for f, m in masks]
            raw = np.ascontiguousarray(raw)
            image_id = f"{pid}_{side}_{view}"
            marker = has_marker and _marker(raw, f"{side}{view}", breast, side == "L", int(raw.max()))
            rel = f"images/{pid}/{image_id}.{ext}"
            row: dict[str, Any] = {
                "image_id": image_id, "patient_id": pid, "study_id": sid, "laterality": side, "view": view,
                "path": rel, "split": "", "source": "synthetic", "density": density, "birads": birads[side],
                "mass": int("mass" in kinds), "calcification": int("calcification" in kinds),
                "distortion": int("distortion" in kinds), "asymmetry": int("asymmetry" in kinds),
                "malignant": int(any(f.malignant for f in placed)), "report_id": rid,
                "age": age, "dense_fraction": round(float(dense[geom.mask].mean()), 4),
                "vendor": profile.vendor, "bits_stored": profile.bits, "marker": int(marker),
            }
            if cfg.fmt == "dicom":
                from mammoclip.synthetic.dicom_writer import write_mammogram

                used = write_mammogram(
                    out / rel, raw, study=dicom_study, image_id=image_id, laterality=side, view=view,
                    profile=profile, spacing_mm=spacing, window=window(raw, breast), compression=compression,
                    marker=marker)
                row["photometric"] = "MONOCHROME1" if profile.monochrome1 else "MONOCHROME2"
                row["transfer_syntax"] = used
            else:
                write_png(out / rel, to_display(raw, cfg.png_bits))
            rows.append(row)
            for f, m in masks:
                box = _box(m)
                if box is None:
                    continue
                mask_rel = f"masks/{image_id}__{f.finding_id}.png"
                _write_mask(out / mask_rel, m)
                boxes.append({"image_id": image_id, "label": f.kind, "xmin": box[0], "ymin": box[1],
                              "xmax": box[2], "ymax": box[3], "space": space, "mask_path": mask_rel,
                              "laterality": side, "view": view, **_finding_attrs(f)})
    report = write_report(rng, age=age, density=density, findings=findings, birads=birads,
                          prior_year=prior_year, typo_rate=cfg.typo_rate)
    rep = {"report_id": rid, "findings": report.findings, "impression": report.impression,
           "history": report.history, "text": report.text, "comparison": report.comparison,
           "composition": report.composition, "patient_id": pid, "study_id": sid}
    return {"rows": rows, "boxes": boxes, "report": rep}


def _prepare_folder(out: Path, cfg: CohortConfig, overwrite: bool) -> bool:
    """Check the output folder; returns True when it already holds exactly this cohort."""
    meta = out / "cohort.json"
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    entries = [p for p in out.iterdir()]
    if not entries:
        return False
    same = False
    if meta.exists():
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        same = (info.get("settings") == cfg.settings() and info.get("version") == GENERATOR_VERSION
                and bool(info.get("complete")))
    if same:  # byte-identical output: nothing to redo, with or without overwrite
        return True
    if not overwrite:
        what = "a different synthetic cohort" if meta.exists() else "other files"
        raise DataError(f"{out} already holds {what}; choose an empty folder or pass overwrite=True (--overwrite)")
    for name in OWNED_PATHS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return False


def generate_cohort(out_dir: str | Path, n_patients: int, seed: int = 0,
                    image_size: tuple[int, int] = PAPER_IMAGE_SIZE, fmt: str = "png", workers: int = 1,
                    overwrite: bool = False, progress: bool | None = None, **options: Any) -> Path:
    """Generate a seeded synthetic screening cohort.

    Args:
        out_dir: Output folder (created). If it already holds a complete cohort with the same
            settings, nothing is regenerated (the output would be byte-identical).
        n_patients: Number of patients; each has one study with RCC, RMLO, LCC, LMLO.
        seed: Cohort seed.
        image_size: ``(H, W)`` of every image.
        fmt: ``"png"`` (processed images; boxes in ``processed`` space) or ``"dicom"`` (16-bit MG
            DICOM; boxes in ``original`` space).
        workers: Worker processes (the output does not depend on it).
        overwrite: Replace a different cohort in ``out_dir`` (only the generator's own files).
        progress: Progress (default: a bar on a terminal, bounded lines when stderr is a log; False: none).
        **options: Further :class:`CohortConfig` fields (``prevalence``, ``density_p``,
            ``typo_rate``, ``marker_rate``, ``split_fractions``, ``png_bits``, ``compression``).

    Returns:
        Path of the written ``manifest.csv``.

    Raises:
        ConfigError: an invalid size, count, format or option.
        DataError: ``out_dir`` holds something else and ``overwrite`` is False.

    Example:
        >>> manifest = generate_cohort("cohort", n_patients=20, image_size=(512, 304), seed=1)
    """
    import pandas as pd

    from mammoclip.data.manifest import Bundle, assign_patient_splits

    unknown = set(options) - set(CohortConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown cohort option(s): {sorted(unknown)}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    cfg = CohortConfig(n_patients=n_patients, seed=int(seed), image_size=tuple(image_size), fmt=fmt, **options)
    out = Path(out_dir)
    if _prepare_folder(out, cfg, overwrite):
        return out / "manifest.csv"
    out.mkdir(parents=True, exist_ok=True)

    bar = progress_bar(n_patients, "synth", "patient", enabled=progress)
    results: list[dict[str, Any]] = []
    if workers == 1:
        for i in range(n_patients):
            results.append(make_patient(i, cfg, out))
            bar.update()
    else:
        import multiprocessing as mp
        import sys

        # fork is fast and needs no __main__ guard; but once torch is loaded its OpenMP pool must
        # not be forked, so spawn then (the caller's script needs `if __name__ == "__main__":`).
        method = "spawn" if "torch" in sys.modules or sys.platform != "linux" else "fork"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            chunk = max(1, min(8, n_patients // (4 * workers)))
            for res in pool.map(make_patient, range(n_patients), [cfg] * n_patients, [out] * n_patients,
                                chunksize=chunk):
                results.append(res)
                bar.update()
    bar.close()

    images = pd.DataFrame([r for res in results for r in res["rows"]])
    splits = assign_patient_splits(images["patient_id"], cfg.split_fractions, seed=cfg.seed)
    images["split"] = images["patient_id"].map(splits)
    box_rows = [b for res in results for b in res["boxes"]]
    boxes = pd.DataFrame(box_rows) if box_rows else None
    reports = pd.DataFrame([res["report"] for res in results])
    bundle = Bundle(images=images, reports=reports, root=out) if boxes is None else \
        Bundle(images=images, boxes=boxes, reports=reports, root=out)
    manifest = bundle.save(out)
    counts = {
        "patients": int(n_patients), "images": int(len(images)), "boxes": int(len(box_rows)),
        "labels": {k: int(images[k].sum()) for k in ("mass", "calcification", "distortion", "asymmetry",
                                                     "malignant")},
        "density": {k: int(v) for k, v in images["density"].value_counts().sort_index().items()},
    }
    info = {"generator": "mammoclip.synthetic", "version": GENERATOR_VERSION, "settings": cfg.settings(),
            "counts": counts, "complete": True}
    (out / "cohort.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return manifest
