"""``mammoclip manifest validate FILE`` and ``mammoclip manifest build --adapter NAME SOURCE --out DIR``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("manifest", help="validate a manifest or build one from a dataset source")
    sub = p.add_subparsers(dest="manifest_command", metavar="<subcommand>", required=True)
    v = sub.add_parser("validate", help="check a manifest (and boxes/reports beside it); problems by row and column")
    v.add_argument("file", help="manifest.csv/.parquet or the folder holding it")
    v.add_argument("--check-files", action="store_true", help="also check that every image path exists")
    v.set_defaults(func=_validate)
    b = sub.add_parser("build", help="build manifest.csv/boxes.csv/reports.csv from a dataset source")
    b.add_argument("source", nargs="?", help="the dataset folder (or CSV for official_csv)")
    b.add_argument("--adapter", default=None, help="source format (detected when omitted): see --list")
    b.add_argument("--out", required=False, help="output folder")
    b.add_argument("--list", action="store_true", help="list the adapters and exit")
    b.add_argument("--group-by", choices=("auto", "folders", "tags"), default=None,
                   help="folder: patients/studies from <patient>/<study>/ folder names or from DICOM tags "
                        "(default auto: folders when every file is two folders deep)")
    b.add_argument("--labels", default=None, help="folder: CSV of image-level labels to join (mass, "
                   "calcification, malignant, density, birads ...)")
    b.add_argument("--labels-key", default=None, help="folder: the --labels column holding the file name, "
                   "relative path or SOPInstanceUID (detected when omitted)")
    b.add_argument("--images", default=None, help="official_csv: folder holding <patient_id>/<image> "
                   "(default: the CSV's folder)")
    b.add_argument("--require-text", action="store_true",
                   help="official_csv: refuse a table in which no breast has report text")
    b.set_defaults(func=_build)


#: Adapter-specific options of ``manifest build``: argparse name -> the one adapter that takes it.
#: Given without --adapter, the option picks that adapter.
ADAPTER_OPTIONS: dict[str, str] = {"group_by": "folder", "labels": "folder", "labels_key": "folder",
                                   "images": "official_csv", "require_text": "official_csv"}


def _adapter_options(args: argparse.Namespace) -> tuple[str | None, dict[str, object]]:
    """The adapter to use and the keyword options to pass it; one line when they do not fit."""
    from mammoclip.errors import ConfigError

    given = {name: getattr(args, name) for name in ADAPTER_OPTIONS if getattr(args, name) not in (None, False)}
    adapter = args.adapter
    for name in given:
        owner = ADAPTER_OPTIONS[name]
        flag = "--" + name.replace("_", "-")
        if adapter is None:
            adapter = owner
        elif adapter != owner:
            raise ConfigError(f"{flag} works only with --adapter {owner} (got --adapter {adapter})")
    if "labels_key" in given and "labels" not in given:
        raise ConfigError("--labels-key needs --labels")
    return adapter, given


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from mammoclip.data.manifest import BOXES_FILE, MANIFEST_FILE, read_boxes, read_reports, validate_manifest
    from mammoclip.errors import DataError

    path = Path(args.file)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: cannot parse manifest: {err}") from err
    problems = [str(p) for p in validate_manifest(df, check_files=args.check_files, root=path.parent)]
    for reader, name in ((read_boxes, BOXES_FILE), (read_reports, "reports.csv")):
        try:
            reader(path.parent / name)
        except DataError as err:
            problems.append(str(err))
    if (path.parent / BOXES_FILE).exists() and not problems:
        boxes = read_boxes(path.parent / BOXES_FILE)
        unknown = sorted(set(boxes["image_id"].astype(str)) - set(df["image_id"].astype(str)))
        problems.extend(f"{BOXES_FILE}: image_id {i!r} is not in the manifest" for i in unknown[:20])
    for line in problems:
        print(f"{path}: {line}")
    print(f"{path}: {len(df)} rows, {len(problems)} problem(s)")
    return 1 if problems else 0


def _build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mammoclip.data.adapters import build_bundle, list_adapters
    from mammoclip.data.manifest import LABEL_COLUMNS, LEFT_OUT_FILE
    from mammoclip.errors import ConfigError

    if args.list:
        for name, text in list_adapters().items():
            print(f"{name:14s} {text}")
        return 0
    if not args.source or not args.out:
        raise ConfigError("manifest build needs SOURCE and --out DIR (or --list)")
    adapter, options = _adapter_options(args)
    bundle = build_bundle(Path(args.source), adapter=adapter, **options)
    out = Path(args.out)
    images = bundle.images.copy()
    # Paths are relative to the source; make them absolute so the manifest works from --out.
    images["path"] = [str(bundle.abspath(p).resolve()) for p in images["path"]]
    bundle.images = images
    if "mask_path" in bundle.boxes.columns:
        boxes = bundle.boxes.copy()
        boxes["mask_path"] = [str(bundle.abspath(p).resolve()) if isinstance(p, str) and p else p
                              for p in boxes["mask_path"]]
        bundle.boxes = boxes
    path = bundle.save(out)
    print(f"{len(images)} images, {len(bundle.boxes)} boxes, {len(bundle.reports)} reports -> {path}")
    labels = [c for c in LABEL_COLUMNS if c in images.columns]
    if labels:
        print("  labels: " + ", ".join(f"{c} {int(images[c].notna().sum())}" for c in labels))
    skipped = list(bundle.images.attrs.get("skipped", []))
    for _file, reason in skipped[:10]:
        print(f"  left out: {reason}")
    if len(skipped) > 10:
        print(f"  ... {len(skipped) - 10} more files left out (all in {LEFT_OUT_FILE})")
    return 0
