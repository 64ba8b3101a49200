"""``mammoclip explain IMAGE_OR_MANIFEST``: FActOR heatmaps, overlays and regions for attributes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mammoclip.cli._options import non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explain``."""
    p = subparsers.add_parser("explain", help="where is the attribute? FActOR heatmaps, overlays and regions")
    p.add_argument("input", metavar="IMAGE_OR_MANIFEST",
                   help="a processed image (PNG at the model's size) or a manifest.csv / its folder (batch mode)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or registry model name")
    p.add_argument("--mapper", required=True, help="mapper folder (a `mammoclip factor train` run or its best/)")
    p.add_argument("--attributes", default=None, help="comma list of the mapper's attributes (default: all)")
    p.add_argument("--method", default="factor", help="factor, or a baseline: top_channels, breast_prior")
    p.add_argument("--split", default=None, help="batch mode: only this split")
    p.add_argument("--top-k", type=positive_int, default=32, help="channels summed per heatmap")
    p.add_argument("--original", action="store_true",
                   help="also write heatmaps on the original DICOM pixels (needs the manifest's transform record)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_run)


def _bundle(path: Path, model: Any) -> Any:
    """A manifest bundle, or a one-row bundle around a single processed image."""
    import pandas as pd

    from mammoclip.attribution.heatmap import check_input_size
    from mammoclip.data.manifest import Bundle, load_bundle
    from mammoclip.errors import DataError
    from mammoclip.imaging.imageio import read_image

    if path.is_dir() or path.suffix.lower() == ".csv":
        return load_bundle(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        raise DataError(f"{path}: a DICOM must be preprocessed first (`mammoclip preprocess`), so that the "
                        "heatmap can be mapped back through its transform record")
    check_input_size(read_image(path), model, str(path))
    row = {"image_id": path.stem, "patient_id": path.stem, "study_id": path.stem, "laterality": "L", "view": "CC",
           "path": str(path.resolve()), "split": "test", "source": "file"}
    return Bundle(pd.DataFrame([row]), root=path.parent)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.attribution import Explainer, HeatmapContext, explain_bundle, load_mapper
    from mammoclip.cli._options import load_model

    model = load_model(args)
    mapper, _ = load_mapper(args.mapper)
    mapper = mapper.to(next(model.parameters()).device)
    names = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else mapper.names
    explainer = Explainer(model, args.method, HeatmapContext(names, mapper=mapper, top_k=args.top_k,
                                                                     tap=mapper.tap))
    bundle = _bundle(Path(args.input), model)
    if args.split:
        bundle = bundle.split(args.split)
    regions = explain_bundle(explainer, bundle, args.out, overlays=not args.no_overlays,
                             original=args.original, batch_size=args.batch_size, num_workers=args.workers,
                             progress=None)
    print(json.dumps({"images": int(len(bundle.images)), "attributes": names,
                      "regions": int(len(regions)), "out": args.out}))
    return 0
