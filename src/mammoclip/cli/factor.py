"""``mammoclip factor train | eval``: Mammo-FActOR mapper training and weak-localization evaluation."""

from __future__ import annotations

import argparse
import json

from mammoclip.cli._options import (
    add_n_boot_arg,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)


def _attributes(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of attribute names, got {text!r}")
    return items


def _tap(text: str) -> int | str:
    """``last`` (the original's final feature map) or a negative ``forward_intermediates`` level."""
    if text.strip().lower() == "last":
        return "last"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'last' or a negative int such as -2, got {text!r}") from None
    if not -5 <= value <= -1:
        raise argparse.ArgumentTypeError(f"must be 'last' or an int in [-5, -1], got {value}")
    return value


def _descriptor(text: str) -> str:
    """A registered descriptor transform (``mammoclip.attribution.mapper.list_descriptor_norms``)."""
    from mammoclip.attribution.mapper import list_descriptor_norms

    if text not in list_descriptor_norms():
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(list_descriptor_norms())}, got {text!r}")
    return text


def _dropout(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``factor`` with its ``train`` and ``eval`` sub-commands."""
    p = subparsers.add_parser("factor", help="Mammo-FActOR: train the attribute mapper, evaluate weak localization")
    sub = p.add_subparsers(dest="factor_command", metavar="<factor command>", required=True)

    t = sub.add_parser("train", help="train the stacked attribute heads on a frozen encoder (best val loss kept)")
    t.add_argument("--checkpoint", required=True, help="checkpoint directory or registry model name")
    t.add_argument("--manifest", required=True, help="manifest.csv (or its folder) with the attributes' label columns")
    t.add_argument("--attributes", type=_attributes, default=["mass", "calcification"],
                   help="comma list of attributes (default mass,calcification)")
    t.add_argument("--sentences", default=None,
                   help='JSON {name: [sentences]} or {name: {"label": column, "sentences": [...]}}')
    t.add_argument("--epochs", type=positive_int, default=20, help="epochs (the notebook: 20)")
    t.add_argument("--batch-size", type=positive_int, default=8, help="images per step (>= 2)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=positive_float, default=0.01, help="AdamW weight decay")
    t.add_argument("--hidden", type=positive_int, default=None, help="hidden width of each head (default h*w)")
    t.add_argument("--loss", default="corrected", choices=("corrected", "original"),
                   help="denominator: negatives only (default) or the notebook's form")
    t.add_argument("--temperature", type=positive_float, default=0.07, help="loss temperature")
    t.add_argument("--tap", type=_tap, default=None,
                   help="feature map the heads read: 'last' (the original) or a forward_intermediates level "
                        "(-2: stride 16, -3: stride 8; default: FactorConfig.tap, -2)")
    t.add_argument("--descriptor", type=_descriptor, default=None,
                   help="transform of each channel map before the heads: none (the original), image, channel, "
                        "sorted (translation-invariant, not the original's; default: FactorConfig.descriptor_norm)")
    t.add_argument("--channel-ids", action="store_true",
                   help="heads also see the channel's index (a deviation from the original's descriptor)")
    t.add_argument("--shift", type=non_negative_int, default=0,
                   help="training augmentation: translate each image's map by up to N cells per axis")
    t.add_argument("--hflip", action="store_true", help="training augmentation: mirror maps left-right (p=1/2)")
    t.add_argument("--vflip", action="store_true", help="training augmentation: mirror maps up-down (p=1/2)")
    t.add_argument("--descriptor-dropout", type=_dropout, default=0.0,
                   help="training dropout on every cell of every descriptor, in [0, 1)")
    t.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="training precision")
    t.add_argument("--max-steps", type=positive_int, default=None, help="cap on optimizer steps")
    t.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--seed", type=seed, default=10, help="seed of the heads and the data order")
    t.add_argument("--no-feature-cache", action="store_true",
                   help="encode images every epoch instead of caching the frozen feature maps in memory")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--out", required=True, help="run directory (the mapper is OUT/best)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="hit rate at IoU 0.25/0.5, pointing game, mask energy vs baselines (with CIs)")
    e.add_argument("--checkpoint", required=True, help="checkpoint directory or registry model name")
    e.add_argument("--mapper", required=True, help="mapper folder (a factor run or its best/)")
    e.add_argument("--manifest", required=True, help="manifest with boxes.csv (and masks) beside it")
    e.add_argument("--split", default="test", help="split to evaluate ('all': every row)")
    e.add_argument("--baselines", default="top_channels,breast_prior,gradcam",
                   help="comma list of baselines (top_channels, breast_prior, gradcam) or ''")
    e.add_argument("--probe-split", default="train", help="split the Grad-CAM linear probe is fitted on")
    e.add_argument("--top-k", type=positive_int, default=32, help="channels summed per heatmap")
    e.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    e.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers")
    e.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add_n_boot_arg(e)
    e.add_argument("--overlays", type=non_negative_int, default=4,
                   help="images per attribute in the overlay grids (rows; one column per method; 0: none)")
    e.add_argument("--out", required=True,
                   help="output directory (localization.csv, summary.csv, results.json, overlays/, index.html)")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from mammoclip.train.factor import FactorConfig, train_factor

    cfg = FactorConfig(attributes=args.attributes, sentences=args.sentences, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, hidden=args.hidden,
                       loss_form=args.loss, temperature=args.temperature, precision=args.precision,
                       max_steps=args.max_steps, workers=args.workers, device=args.device, seed=args.seed,
                       cache_features=False if args.no_feature_cache else None, shift=args.shift,
                       hflip=args.hflip, vflip=args.vflip, descriptor_dropout=args.descriptor_dropout,
                       channel_ids=args.channel_ids,
                       **({"descriptor_norm": args.descriptor} if args.descriptor else {}))  # else the default
    if args.tap is not None:  # None: FactorConfig's default tap; "last": the original's last map
        cfg.tap = None if args.tap == "last" else args.tap
    run = train_factor(args.checkpoint, args.manifest, cfg, out_dir=args.out, resume=args.resume)
    best = min((h["val/loss"] for h in run.fit.history if "val/loss" in h), default=None)
    print(json.dumps({"mapper": str(run.mapper_dir), "attributes": run.mapper.names, "best_val_loss": best,
                      "steps": run.fit.steps, "out": args.out}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mammoclip.attribution.evaluation import evaluate_localization
    from mammoclip.cli._options import load_model
    from mammoclip.data.manifest import load_bundle

    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    res = evaluate_localization(load_model(args), args.mapper, load_bundle(args.manifest), split=args.split,
                                baselines=baselines, probe_split=args.probe_split, top_k=args.top_k,
                                n_boot=args.n_boot, batch_size=args.batch_size, num_workers=args.workers,
                                out_dir=args.out, progress=None, overlays=args.overlays)
    print(json.dumps({**res["summary"], "out": args.out}))
    return 0
