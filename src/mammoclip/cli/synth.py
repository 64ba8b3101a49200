"""``mammoclip synth``: write a seeded synthetic screening cohort (images, masks, reports, manifest)."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import image_size, positive_int, probability, seed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser("synth", help="generate a seeded synthetic mammography cohort",
                              description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=positive_int, required=True, help="number of patients (4 images each)")
    p.add_argument("--seed", type=seed, default=0, help="cohort seed (default 0)")
    p.add_argument("--size", type=image_size, default=None, help="image size HxW (default 1520x912)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--dicom", dest="fmt", action="store_const", const="dicom",
                     help="write 16-bit MG DICOM files (boxes in original space)")
    fmt.add_argument("--png", dest="fmt", action="store_const", const="png",
                     help="write processed PNG images (default; boxes in processed space)")
    p.add_argument("--png-bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--typo-rate", type=probability, default=None, help="share of report words with typos (default 0.01)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace a different cohort in --out")
    p.set_defaults(func=run, fmt="png")


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print where the manifest is."""
    from mammoclip.constants import PAPER_IMAGE_SIZE
    from mammoclip.synthetic import generate_cohort

    options = {"png_bits": args.png_bits}
    if args.typo_rate is not None:
        options["typo_rate"] = args.typo_rate
    manifest = generate_cohort(args.out, args.patients, seed=args.seed, image_size=args.size or PAPER_IMAGE_SIZE,
                               fmt=args.fmt, workers=args.workers, overwrite=args.overwrite, **options)
    print(manifest)
    return 0
