"""``mammoclip probe``: frozen-encoder linear probe at label fractions, seeds and inits."""

from __future__ import annotations

import argparse

from mammoclip.cli.zeroshot import add_model_args, load_manifest, print_summary
from mammoclip.errors import ConfigError


def parse_list(text: str, kind: type, option: str) -> list:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``; a ConfigError names the option on bad input."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{option}: cannot parse {text!r} as a comma-separated list of {kind.__name__}") from err


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``probe``."""
    p = subparsers.add_parser("probe", help="true linear probe (frozen, eval-mode encoder) with data-efficiency curves")
    add_model_args(p)
    p.add_argument("--task", required=True, help="mass|calcification|distortion|asymmetry|malignancy|density|birads")
    p.add_argument("--fractions", default="0.1,0.5,1.0", help="label fractions of the training patients")
    p.add_argument("--seeds", default="0,1,2", help="seeds (fraction sampling, val carving)")
    p.add_argument("--init", default="pretrained", help="comma list of pretrained|random|imagenet")
    p.add_argument("--features", default="pooled", choices=("pooled", "projected"), help="which features to probe")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of training patients held out for selection")
    p.add_argument("--aggregate", default="max", choices=("max", "mean"), help="per-breast view aggregation")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the 95%% CIs")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from mammoclip.evaluate.probe import init_factory, run_probe
    from mammoclip.evaluate.tasks import get_task

    get_task(args.task)
    fractions = parse_list(args.fractions, float, "--fractions")
    seeds = parse_list(args.seeds, int, "--seeds")
    inits = parse_list(args.init, str, "--init")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = init_factory(args.checkpoint)
    results = run_probe(
        lambda init: base(init).to(device), load_manifest(args), args.task,
        fractions=fractions, seeds=seeds, inits=inits, out_dir=args.out, val_fraction=args.val_fraction,
        feature_kind=args.features, cache_dir=args.cache, aggregate=args.aggregate, batch_size=args.batch_size,
        num_workers=args.workers, n_boot=args.n_boot, allow_resize=args.allow_resize,
        model_name=str(args.checkpoint), progress=True,
    )
    print_summary(results, args.out)
    return 0
