"""``mammoclip zeroshot``: prompt-ensemble zero-shot classification of a manifest.

Also holds the options every evaluation command shares (model, manifest, data loading), which
``retrieval``, ``probe``, ``finetune`` and ``embed`` import from here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_model_args(parser: argparse.ArgumentParser, *, manifest: bool = True) -> None:
    """Options shared by the evaluation commands."""
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory or registry model name (see `mammoclip models list`)")
    if manifest:
        parser.add_argument("--manifest", required=True, help="manifest.csv (or its folder)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--allow-resize", action="store_true",
                        help="resize images whose size differs from the model's input instead of failing")


def load_model(args: argparse.Namespace) -> Any:
    """The model named by ``--checkpoint``, on ``--device``, in eval mode."""
    import torch

    from mammoclip.evaluate.features import resolve_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_model(args.checkpoint).to(device).eval()


def load_manifest(args: argparse.Namespace) -> Any:
    """The bundle named by ``--manifest``."""
    from mammoclip.data.manifest import load_bundle

    return load_bundle(args.manifest)


def print_summary(results: dict[str, Any], out: str | None) -> None:
    """One JSON line of headline numbers (and where the run directory is)."""
    line = dict(results.get("summary", {}))
    if out:
        line["out"] = str(out)
    print(json.dumps(line))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zeroshot``."""
    p = subparsers.add_parser("zeroshot", help="zero-shot classification with prompt ensembles (per image and per breast)")
    add_model_args(p)
    p.add_argument("--task", required=True, help="mass|calcification|distortion|asymmetry|malignancy|density|birads")
    p.add_argument("--prompts", default="ensemble", help="paper | ensemble | JSON file {class: [prompts]}")
    p.add_argument("--split", default="test", help="train|val|test|all")
    p.add_argument("--aggregate", default="max", choices=("max", "mean"), help="per-breast view aggregation")
    p.add_argument("--logit-scale", action="store_true", help="scale similarities by the model's temperature")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the 95%% CIs")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.evaluate.tasks import get_task
    from mammoclip.evaluate.zeroshot import run_zeroshot

    get_task(args.task)
    bundle = load_manifest(args)
    model = load_model(args)
    results = run_zeroshot(model, bundle, args.task, prompts=args.prompts, out_dir=args.out, split=args.split,
                           aggregate=args.aggregate, use_logit_scale=args.logit_scale, batch_size=args.batch_size,
                           num_workers=args.workers, n_boot=args.n_boot, allow_resize=args.allow_resize,
                           model_name=str(args.checkpoint), progress=True)
    print_summary(results, args.out)
    return 0
