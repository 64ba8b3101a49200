"""``mammoclip finetune``: full fine-tuning with a task head at label fractions, seeds and inits."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_model_args,
    add_out_arg,
    add_selection_args,
    add_sweep_args,
    check_inputs,
    dropout_rate,
    load_manifest,
    non_negative_float,
    positive_float,
    positive_int,
    print_summary,
    resolve_out,
    split_counts,
    sweep_kwargs,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune``."""
    p = subparsers.add_parser("finetune", help="fine-tune the image tower with a task head (val-selected epoch)")
    add_model_args(p)
    add_sweep_args(p, fractions="1.0", seeds="0", seeds_help="seeds")
    p.add_argument("--epochs", type=positive_int, default=30, help="epochs per fit")
    p.add_argument("--lr", type=positive_float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--balancing", default="weighted", choices=("weighted", "sampler", "none"),
                   help="weighted loss, class-balanced sampling, or neither")
    p.add_argument("--dropout", type=dropout_rate, default=0.0, help="dropout before the head")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="training precision")
    p.add_argument("--max-steps", type=positive_int, default=None, help="cap on optimizer steps per fit")
    add_selection_args(p, val_fraction_help="share of training patients for epoch selection")
    add_out_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the imports below, which take seconds
    from mammoclip.evaluate.probe import init_factory
    from mammoclip.train.finetune import FinetuneConfig, run_finetune

    resolve_out(args)
    sweep = sweep_kwargs(args)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         balancing=args.balancing, dropout=args.dropout, val_fraction=args.val_fraction,
                         precision=args.precision, workers=args.workers, max_steps=args.max_steps,
                         device=args.device or "auto")
    bundle = load_manifest(args)
    results = run_finetune(init_factory(args.checkpoint), bundle, args.task, **sweep, cfg=cfg)
    print_summary(results, args.out, counts=split_counts(bundle, args.task, "test"),
                  split_note="fitted on train, epoch selected on held-out train patients")
    return 0
