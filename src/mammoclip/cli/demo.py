"""``mammoclip demo``: the whole pipeline on a synthetic cohort, with an HTML report."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import positive_int, seed


def _default(name: str) -> object:
    """A :class:`~mammoclip.demo.DemoConfig` default, so the help text cannot drift from the code."""
    from mammoclip.demo import DemoConfig

    return DemoConfig.__dataclass_fields__[name].default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on a synthetic cohort and write an HTML report",
                       description="Synthesize a cohort, write DICOMs, preprocess, pre-train mammoclip-lite, "
                                   "evaluate (zero-shot, linear probes vs baselines) and write index.html.")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--patients", type=positive_int, default=None, help=f"synthetic patients (default {_default('patients')}; 4 images each)")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"pre-training epochs (default {_default('epochs')})")
    p.add_argument("--workers", type=positive_int, default=None, help=f"processes for synthesis/preprocessing (default {_default('workers')})")
    p.add_argument("--seed", type=seed, default=None, help=f"cohort seed (default {_default('seed')})")
    p.add_argument("--quick", action="store_true", help="a tiny run through every stage (about a minute)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mammoclip.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    changes = {k: getattr(args, k) for k in ("patients", "epochs", "workers", "seed") if getattr(args, k) is not None}
    cfg = replace(cfg, **changes)
    run_demo(cfg)
    return 0
