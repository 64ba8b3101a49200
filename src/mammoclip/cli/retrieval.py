"""``mammoclip retrieval``: image <-> report Recall@K on a held-out split."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_model_args,
    add_out_arg,
    check_inputs,
    load_manifest,
    load_model,
    positive_int_list,
    print_summary,
    resolve_out,
    split_counts,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``retrieval``."""
    p = subparsers.add_parser("retrieval", help="image->text and text->image Recall@1/5/10 on a held-out split")
    add_model_args(p)
    p.add_argument("--split", default="test", help="train|val|test|all")
    p.add_argument("--ks", type=positive_int_list, default="1,5,10", help="comma-separated K values (each >= 1)")
    add_out_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the imports below, which take seconds
    from mammoclip.evaluate import distributed as D
    from mammoclip.evaluate.retrieval import run_retrieval

    ks = tuple(args.ks)
    bundle = load_manifest(args)
    with D.inference_job(args.device) as device:  # one process, or every process of a torchrun job
        args.device = str(device)
        model = load_model(args)
        args.out = D.on_primary(lambda: resolve_out(args))
        results = run_retrieval(model, bundle, split=args.split, ks=ks, out_dir=args.out,
                                batch_size=args.batch_size, num_workers=args.workers,
                                allow_resize=args.allow_resize, model_name=str(args.checkpoint), progress=None)
        if D.job().is_primary:
            print_summary(results, args.out, counts=split_counts(bundle, None, args.split))
    return 0
