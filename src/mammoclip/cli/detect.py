"""``mammoclip detect train | eval | predict``: RetinaNet localization on a Mammo-CLIP image tower."""

from __future__ import annotations

import argparse
import json

from mammoclip.cli._options import (
    add_n_boot_arg,
    fraction,
    image_size,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    seed,
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest.csv (or its folder); boxes.csv beside it")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per step / forward pass")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="DataLoader workers decoding images (0: in the main process)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect`` with its ``train``, ``eval`` and ``predict`` sub-commands."""
    p = subparsers.add_parser("detect", help="lesion localization: RetinaNet on the image tower (train, eval, predict)")
    sub = p.add_subparsers(dest="detect_command", metavar="<detect command>", required=True)

    t = sub.add_parser("train", help="train a detector; the epoch with the best validation AP@0.5 is kept")
    _common(t)
    t.add_argument("--config", default=None, help="detection YAML (sections detector, train), e.g. "
                                                  "configs/detect-b5-paper.yaml; options below override it")
    t.add_argument("--checkpoint", default=None,
                   help="image tower source: registry name, checkpoint directory or official .tar")
    t.add_argument("--classes", default=None, help="comma list of classes: mass, calcification (default mass)")
    t.add_argument("--size", type=image_size, default=None, help="input HEIGHTxWIDTH (default 1520x912)")
    t.add_argument("--init", default=None, choices=("pretrained", "imagenet", "random"), help="encoder weights")
    t.add_argument("--protocol", default=None, choices=("frozen", "finetune"),
                   help="frozen encoder (eval mode, BN statistics frozen) or full fine-tuning")
    t.add_argument("--fraction", type=fraction, default=None, help="share of training patients used, in (0, 1]")
    t.add_argument("--seed", type=seed, default=None, help="seed of the fraction, heads, data order, augmentation")
    t.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    t.add_argument("--lr", type=positive_float, default=None, help="learning rate of the FPN and heads")
    t.add_argument("--augment", default=None, choices=("none", "flip", "light"), help="box-safe augmentation")
    t.add_argument("--focal-alpha", type=probability, default=None, help="focal loss alpha")
    t.add_argument("--focal-gamma", type=non_negative_float, default=None, help="focal loss gamma (0: cross-entropy)")
    t.add_argument("--score-thresh", type=probability, default=None, help="score threshold before NMS")
    t.add_argument("--max-detections", type=positive_int, default=None, help="detections kept per image")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="AP@0.5, COCO AP and FROC on one split, all images and positives only")
    _common(e)
    e.add_argument("--detector", required=True, help="detector checkpoint directory (RUN/best)")
    e.add_argument("--split", default="test", help="split to evaluate (default test)")
    add_n_boot_arg(e)
    e.add_argument("--overlays", type=non_negative_int, default=8, help="images drawn into OUT/overlays")
    e.set_defaults(func=_eval)

    r = sub.add_parser("predict", help="detections with boxes in processed and original DICOM pixels")
    _common(r)
    r.add_argument("--detector", required=True, help="detector checkpoint directory (RUN/best)")
    r.add_argument("--split", default=None, help="only this split (default: every row)")
    r.add_argument("--overlays", type=non_negative_int, default=8, help="images drawn into OUT/overlays")
    r.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    from mammoclip.detect.config import load_detect_config
    from mammoclip.detect.run import train_detector

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    det_cfg, run_cfg = load_detect_config(
        args.config,
        detector__classes=classes, detector__image_size=args.size, detector__focal_alpha=args.focal_alpha,
        detector__focal_gamma=args.focal_gamma, detector__score_thresh=args.score_thresh,
        detector__max_detections=args.max_detections,
        train__checkpoint=args.checkpoint, train__init=args.init,
        train__freeze_encoder=None if args.protocol is None else args.protocol == "frozen",
        train__label_fraction=args.fraction, train__seed=args.seed, train__epochs=args.epochs, train__lr=args.lr,
        train__augment=args.augment, train__batch_size=args.batch_size, train__workers=args.workers,
        train__device=args.device,
    )
    run = train_detector(args.manifest, det_cfg, run_cfg, args.out)
    print(json.dumps({"best": str(run.best) if run.best else None, "best_epoch": run.best_epoch, "out": args.out}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from mammoclip.detect.model import load_detector
    from mammoclip.detect.run import evaluate_detector

    det = load_detector(args.detector, map_location=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    res = evaluate_detector(det, args.manifest, split=args.split, out_dir=args.out, n_boot=args.n_boot,
                            batch_size=args.batch_size or 8, workers=args.workers or 0, overlays=args.overlays)
    print(json.dumps({**res["summary"], "out": args.out}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch

    from mammoclip.detect.model import load_detector
    from mammoclip.detect.run import predict

    det = load_detector(args.detector, map_location=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preds = predict(det, args.manifest, out_dir=args.out, split=args.split, batch_size=args.batch_size or 8,
                    workers=args.workers or 0, overlays=args.overlays)
    print(json.dumps({"detections": len(preds), "images": int(preds["image_id"].nunique()), "out": args.out}))
    return 0
