"""``mammoclip zeroshot``: prompt-ensemble zero-shot classification of a manifest."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_aggregate_arg,
    add_model_args,
    add_n_boot_arg,
    add_out_arg,
    add_task_arg,
    check_inputs,
    load_manifest,
    load_model,
    print_summary,
    resolve_out,
    split_counts,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zeroshot``."""
    p = subparsers.add_parser("zeroshot", help="zero-shot classification with prompt ensembles (per image and per breast)")
    add_model_args(p)
    add_task_arg(p)
    p.add_argument("--prompts", default="ensemble", help="paper | ensemble | JSON file {class: [prompts]}")
    p.add_argument("--split", default="test",
                   help="manifest split to score: train|val|test|all (a split drawn by hash when the manifest "
                        "was built is named in the summary: use all for a model never trained on this data)")
    add_aggregate_arg(p)
    p.add_argument("--logit-scale", action="store_true", help="scale similarities by the model's temperature")
    add_n_boot_arg(p)
    add_out_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the imports below, which take seconds
    from mammoclip.evaluate import distributed as D
    from mammoclip.evaluate.tasks import get_task
    from mammoclip.evaluate.zeroshot import run_zeroshot

    get_task(args.task)
    bundle = load_manifest(args)
    with D.inference_job(args.device) as device:  # one process, or every process of a torchrun job
        args.device = str(device)
        model = load_model(args)
        args.out = D.on_primary(lambda: resolve_out(args))
        results = run_zeroshot(model, bundle, args.task, prompts=args.prompts, out_dir=args.out, split=args.split,
                               aggregate=args.aggregate, use_logit_scale=args.logit_scale,
                               batch_size=args.batch_size, num_workers=args.workers, n_boot=args.n_boot,
                               allow_resize=args.allow_resize, model_name=str(args.checkpoint), progress=None)
        if D.job().is_primary:
            print_summary(results, args.out, counts=split_counts(bundle, args.task, args.split))
    return 0
