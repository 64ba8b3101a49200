"""Draw ``docs/images/cohort_grid.png``: CC/MLO pairs of the synthetic cohort across densities and findings.

One row per BI-RADS density (A-D); each row shows two breasts as (CC, MLO) pairs, chosen to cover
the finding kinds, with every finding's box drawn in its colour and labelled. Run:

    python scripts/make_cohort_grid.py [--out docs/images/cohort_grid.png] [--patients 60] [--seed 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from mammoclip.data.manifest import load_bundle
from mammoclip.imaging.imageio import read_image
from mammoclip.synthetic import generate_cohort

#: Box colours (BGR) per finding label.
COLOURS: dict[str, tuple[int, int, int]] = {
    "mass": (60, 60, 255),
    "calcification": (0, 220, 255),
    "distortion": (255, 120, 0),
    "asymmetry": (220, 0, 220),
    "skin_thickening": (0, 200, 0),
    "benign_calcification": (200, 200, 200),
}


def _pick_breasts(bundle, per_row: int) -> list[list[tuple[str, str]]]:
    """Per density, the (patient, side) breasts with the most distinct finding kinds, not yet shown."""
    images = bundle.images
    boxes = bundle.boxes.drop(columns=["laterality"], errors="ignore").merge(
        images[["image_id", "patient_id", "laterality"]], on="image_id")
    shown: set[str] = set()
    rows = []
    for density in "ABCD":
        sub = images[images["density"] == density]
        breasts = sub.groupby(["patient_id", "laterality"]).size().index.tolist()

        labels = {b: set(boxes[(boxes["patient_id"] == b[0]) & (boxes["laterality"] == b[1])]["label"])
                  for b in breasts}
        chosen: list[tuple[str, str]] = []
        for _ in range(per_row):
            rest = [b for b in breasts if b not in chosen]
            if not rest:
                break
            best = max(rest, key=lambda b: (len(labels[b] - shown), len(labels[b])))
            chosen.append(best)
            shown |= labels[best]
        rows.append(chosen)
    return rows


def _tile(bundle, image_id: str, size: tuple[int, int]) -> np.ndarray:
    row = bundle.images[bundle.images["image_id"] == image_id].iloc[0]
    img = read_image(bundle.abspath(row["path"]))
    h, w = img.shape
    img8 = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    tile = cv2.cvtColor(cv2.resize(img8, (size[1], size[0]), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    sx, sy = size[1] / w, size[0] / h
    for _, b in bundle.boxes[bundle.boxes["image_id"] == image_id].iterrows():
        colour = COLOURS.get(str(b["label"]), (255, 255, 255))
        p0 = (int(b["xmin"] * sx), int(b["ymin"] * sy))
        p1 = (int(b["xmax"] * sx), int(b["ymax"] * sy))
        cv2.rectangle(tile, p0, p1, colour, 1, cv2.LINE_AA)
        label = str(b["label"]).replace("_calcification", " calc").replace("calcification", "calc")
        cv2.putText(tile, label, (p0[0], max(10, p0[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colour, 1, cv2.LINE_AA)
    view = f"{row['laterality']}{row['view']}  density {row['density']}  BI-RADS {row['birads']}"
    cv2.putText(tile, view, (4, size[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images/cohort_grid.png"))
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(760, 456), help="generated image size H W")
    parser.add_argument("--tile", type=int, nargs=2, default=(380, 228), help="tile size H W")
    parser.add_argument("--per-row", type=int, default=2, help="breasts (CC/MLO pairs) per row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_cohort(Path(tmp) / "cohort", args.patients, seed=args.seed, image_size=tuple(args.size),
                                   workers=2)
        bundle = load_bundle(manifest)
        rows = []
        for breasts in _pick_breasts(bundle, args.per_row):
            tiles = []
            for pid, side in breasts:
                for view in ("CC", "MLO"):
                    tiles.append(_tile(bundle, f"{pid}_{side}_{view}", tuple(args.tile)))
                tiles.append(np.full((args.tile[0], 6, 3), 40, np.uint8))
            rows.append(np.concatenate(tiles[:-1], axis=1))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
        grid = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {size_mb:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
