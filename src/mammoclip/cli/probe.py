"""``mammoclip probe``: frozen-encoder linear probe at label fractions, seeds and inits."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_model_args,
    add_out_arg,
    add_selection_args,
    add_sweep_args,
    check_inputs,
    load_manifest,
    print_summary,
    resolve_out,
    split_counts,
    sweep_kwargs,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``probe``."""
    p = subparsers.add_parser("probe", help="true linear probe (frozen, eval-mode encoder) with data-efficiency curves")
    add_model_args(p)
    add_sweep_args(p, fractions="0.1,0.5,1.0", seeds="0,1,2", seeds_help="seeds (fraction sampling, val carving)")
    p.add_argument("--features", default="pooled", choices=("pooled", "projected"), help="which features to probe")
    add_selection_args(p, val_fraction_help="share of training patients held out for selection")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    add_out_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the imports below, which take seconds
    from mammoclip.evaluate import distributed as D
    from mammoclip.evaluate.probe import init_factory, run_probe

    with D.inference_job(args.device) as device:  # one process, or every process of a torchrun job
        args.out = D.on_primary(lambda: resolve_out(args))
        sweep = sweep_kwargs(args)  # a task typo fails here, before the manifest is read
        base = init_factory(args.checkpoint)
        bundle = load_manifest(args)
        results = run_probe(
            lambda init: base(init).to(device), bundle, args.task, **sweep,
            val_fraction=args.val_fraction, feature_kind=args.features, cache_dir=args.cache,
            batch_size=args.batch_size, num_workers=args.workers, progress=None,
        )
        if D.job().is_primary:
            print_summary(results, args.out, counts=split_counts(bundle, args.task, "test"),
                          split_note="heads fitted on train, C selected on held-out train patients")
    return 0
