"""``mammoclip embed`` (export image/report embeddings) and ``mammoclip neighbors`` (top-k search)."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import (
    add_model_args,
    add_out_arg,
    check_inputs,
    load_manifest,
    load_model,
    positive_int,
    resolve_out,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed`` and ``neighbors``."""
    p = subparsers.add_parser("embed", help="export image and/or report embeddings with ids (.parquet/.npz/.csv)")
    add_model_args(p)
    p.add_argument("--what", default="both", choices=("both", "images", "texts"), help="which embeddings")
    p.add_argument("--split", default="all", help="train|val|test|all (images)")
    add_out_arg(p, what="output file (.parquet, .npz or .csv)", file="embeddings.parquet")
    p.set_defaults(func=_embed)

    n = subparsers.add_parser("neighbors", help="top-k most similar images/reports to a query image or text")
    n.add_argument("--index", required=True, help="embeddings file written by `mammoclip embed`")
    q = n.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="query image file")
    q.add_argument("--text", help="query text")
    n.add_argument("-k", type=positive_int, default=5, help="number of neighbours")
    n.add_argument("--kind", choices=("image", "text"), default=None, help="search only images or only reports")
    n.add_argument("--checkpoint", default=None, help="model for the query (default: the one that built the index)")
    n.add_argument("--device", default=None, help="torch device")
    n.set_defaults(func=_neighbors)


def _embed(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the imports below, which take seconds
    from mammoclip.embed import export_embeddings
    from mammoclip.evaluate import distributed as D

    bundle = load_manifest(args)
    with D.inference_job(args.device) as device:  # one process, or every process of a torchrun job
        args.device = str(device)
        model = load_model(args)
        args.out = D.on_primary(lambda: resolve_out(args))
        out = export_embeddings(model, bundle, args.out, images=args.what in ("both", "images"),
                                texts=args.what in ("both", "texts"), split=args.split, batch_size=args.batch_size,
                                num_workers=args.workers, allow_resize=args.allow_resize,
                                checkpoint=str(args.checkpoint), progress=None)
        if D.job().is_primary:
            print(out)
    return 0


def _neighbors(args: argparse.Namespace) -> int:
    from mammoclip.embed import embed_image_file, embed_text, load_embeddings, nearest_neighbors
    from mammoclip.errors import ConfigError

    table, matrix, meta = load_embeddings(args.index)
    args.checkpoint = args.checkpoint or meta.get("checkpoint")
    if not args.checkpoint:
        raise ConfigError(f"{args.index} does not record its model; pass --checkpoint")
    model = load_model(args)
    query = embed_image_file(model, args.image) if args.image else embed_text(model, args.text)
    hits = nearest_neighbors(table, matrix, query, k=args.k, kind=args.kind)
    cols = [c for c in ("rank", "score", "kind", "id", "patient_id", "laterality", "view", "path") if c in hits.columns]
    print(hits[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
