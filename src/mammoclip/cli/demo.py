"""``mammoclip demo``: the whole pipeline on a synthetic cohort, with an HTML report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mammoclip.cli._options import positive_int, seed

if TYPE_CHECKING:
    from mammoclip.demo import DemoConfig


def _default(name: str) -> object:
    """A :class:`~mammoclip.demo.DemoConfig` default, so the help text cannot drift from the code."""
    from mammoclip.demo import DemoConfig

    return DemoConfig.__dataclass_fields__[name].default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on a synthetic cohort and write an HTML report",
                       description="Synthesize a cohort, write DICOMs, preprocess, pre-train mammoclip-lite, "
                                   "evaluate (zero-shot, linear probes vs baselines, mass detection with a "
                                   "RetinaNet vs ImageNet init, Mammo-FActOR weak localization vs baselines) "
                                   "and write index.html.")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--patients", type=positive_int, default=None, help=f"synthetic patients (default {_default('patients')}; 4 images each)")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"pre-training epochs (default {_default('epochs')})")
    p.add_argument("--workers", type=positive_int, default=None, help=f"processes for synthesis/preprocessing (default {_default('workers')})")
    p.add_argument("--seed", type=seed, default=None, help=f"cohort seed (default {_default('seed')})")
    p.add_argument("--quick", action="store_true", help="a tiny run through every stage (about a minute)")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="skip the detection stage, which runs by default (mass RetinaNet, pre-trained vs "
                        "ImageNet-init tower)")
    p.add_argument("--no-factor", dest="factor", action="store_false",
                   help="skip the attribution stage, which runs by default (Mammo-FActOR mapper and its "
                        "localization baselines)")
    p.set_defaults(func=_run)


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The :class:`~mammoclip.demo.DemoConfig` the parsed ``demo`` arguments ask for."""
    from dataclasses import replace

    from mammoclip.demo import DemoConfig

    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("patients", "epochs", "workers", "seed")
                               if getattr(args, k) is not None}
    return replace(cfg, **changes, detect=args.detect, factor=args.factor)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.demo import run_demo

    run_demo(demo_config(args))
    return 0
