"""``mammoclip pretrain``: Mammo-CLIP pre-training from a YAML preset (also under torchrun)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain``."""
    p = subparsers.add_parser("pretrain", help="pre-train a Mammo-CLIP model (resumable; DDP under torchrun)")
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/pretrain-lite-cpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-4 --set data.image_text=[cohort] (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of the run folder (or from CHECKPOINT)")
    p.add_argument("--out", default=None, help="run folder (default: out_dir/run_name from the config)")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from mammoclip.train import distributed as D
    from mammoclip.train.pretrain import pretrain

    try:
        run_dir = pretrain(args.config, args.overrides, resume=args.resume, out_dir=args.out)
        if D.is_primary():
            print(run_dir)
    finally:
        D.cleanup()
    return 0
