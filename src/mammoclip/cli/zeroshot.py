"""``mammoclip zeroshot``: prompt-ensemble zero-shot classification of a manifest."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_aggregate_arg,
    add_model_args,
    add_n_boot_arg,
    add_task_arg,
    load_manifest,
    load_model,
    print_summary,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zeroshot``."""
    p = subparsers.add_parser("zeroshot", help="zero-shot classification with prompt ensembles (per image and per breast)")
    add_model_args(p)
    add_task_arg(p)
    p.add_argument("--prompts", default="ensemble", help="paper | ensemble | JSON file {class: [prompts]}")
    p.add_argument("--split", default="test", help="train|val|test|all")
    add_aggregate_arg(p)
    p.add_argument("--logit-scale", action="store_true", help="scale similarities by the model's temperature")
    add_n_boot_arg(p)
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
