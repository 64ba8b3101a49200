"""``mammoclip finetune``: full fine-tuning with a task head at label fractions, seeds and inits."""

from __future__ import annotations

import argparse

from mammoclip.cli.probe import parse_list
from mammoclip.cli.zeroshot import add_model_args, load_manifest, print_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune``."""
    p = subparsers.add_parser("finetune", help="fine-tune the image tower with a task head (val-selected epoch)")
    add_model_args(p)
    p.add_argument("--task", required=True, help="mass|calcification|distortion|asymmetry|malignancy|density|birads")
    p.add_argument("--fractions", default="1.0", help="label fractions of the training patients")
    p.add_argument("--seeds", default="0", help="seeds")
    p.add_argument("--init", default="pretrained", help="comma list of pretrained|random|imagenet")
    p.add_argument("--epochs", type=int, default=30, help="epochs per fit")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--balancing", default="weighted", choices=("weighted", "sampler", "none"),
                   help="weighted loss, class-balanced sampling, or neither")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the head")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="training precision")
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps per fit")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of training patients for epoch selection")
    p.add_argument("--aggregate", default="max", choices=("max", "mean"), help="per-breast view aggregation")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the 95%% CIs")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.evaluate.probe import init_factory
    from mammoclip.evaluate.tasks import get_task
    from mammoclip.train.finetune import FinetuneConfig, run_finetune

    get_task(args.task)
    fractions = parse_list(args.fractions, float, "--fractions")
    seeds = parse_list(args.seeds, int, "--seeds")
    inits = parse_list(args.init, str, "--init")
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         balancing=args.balancing, dropout=args.dropout, val_fraction=args.val_fraction,
                         precision=args.precision, workers=args.workers, max_steps=args.max_steps,
                         device=args.device or "auto")
    results = run_finetune(init_factory(args.checkpoint), load_manifest(args), args.task, fractions=fractions,
                           seeds=seeds, inits=inits, out_dir=args.out, cfg=cfg, aggregate=args.aggregate,
                           n_boot=args.n_boot, allow_resize=args.allow_resize, model_name=str(args.checkpoint))
    print_summary(results, args.out)
    return 0
