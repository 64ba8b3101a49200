"""``mammoclip preprocess`` and ``mammoclip preprocess-merge``: DICOMs -> model-ready PNGs + manifest."""

from __future__ import annotations

import argparse

from mammoclip.cli._options import image_size, non_negative_float, non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("preprocess", help="decode, crop and resize DICOMs into PNGs with a manifest")
    p.add_argument("input", help="a DICOM manifest (file or folder) or an adapter source folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=image_size, default="1520x912",
                   help="output HEIGHTxWIDTH, each side 8-16384 (default: the paper's 1520x912)")
    p.add_argument("--resize", choices=("stretch", "pad"), default="stretch",
                   help="stretch to size (paper) or keep the aspect ratio and pad")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.add_argument("--flip-to", choices=("left", "none"), default="left",
                   help="mirror breasts so the chest wall is on the left, or keep orientation")
    p.add_argument("--window", choices=("voi", "minmax", "percentile"), default="voi",
                   help="intensity window: the DICOM VOI LUT/window, or min-max/percentiles in the breast")
    p.add_argument("--mode", choices=("ours", "paper"), default="ours",
                   help="'paper' reproduces the original preprocessing exactly (official checkpoints)")
    p.add_argument("--j2k-reduce", type=_j2k_reduce, default=None, metavar="auto|0|1|2...",
                   help="JPEG 2000 input: decode N wavelet levels smaller (2**N per side, a fraction of the "
                        "cost), or 'auto': the largest reduction that never upsamples the breast crop to --size; "
                        "other syntaxes are unaffected (default: 0, full decode)")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="worker processes (default 0: one per usable core; 1 for batches under 16 images)")
    p.add_argument("--shard", default=None, help="i/N: process every N-th image starting at i (0-based)")
    p.add_argument("--adapter", default=None, help="source format when INPUT is not a manifest (see `manifest build`)")
    p.add_argument("--merge", action="store_true", help="after this run, merge the shard parts found in --out")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="decode budget: largest Rows x Columns x frames decoded; larger files fail as TOO_LARGE "
                        "before any decode (default 67108864 = 8192x8192, twice the largest real mammograms)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry files an earlier run recorded as crashing a worker (DECODE_CRASH) or hanging "
                        "(DECODE_TIMEOUT); skipped otherwise")
    p.add_argument("--timeout", type=non_negative_float, default=None, metavar="SECONDS",
                   help="seconds one image may take before its worker is killed and the file fails as "
                        "DECODE_TIMEOUT (default 600; 0: no limit)")
    p.set_defaults(func=_run)
    m = subparsers.add_parser("preprocess-merge", help="join the shard parts of a sharded preprocess run")
    m.add_argument("out", help="the --out folder of the shards")
    m.set_defaults(func=_merge)


def _run(args: argparse.Namespace) -> int:
    from mammoclip.data.preprocess import (
        DEFAULT_IMAGE_TIMEOUT,
        DEFAULT_LIMITS,
        DecodeLimits,
        PreprocessOptions,
        merge_shards,
        parse_shard,
        preprocess,
        reuse_freed_memory,
    )

    extra = {} if args.j2k_reduce is None else {"j2k_reduce": args.j2k_reduce}
    options = PreprocessOptions(size=args.size, resize=args.resize, bits=args.bits,
                                flip_to=args.flip_to, window=args.window, mode=args.mode, **extra)
    shard = parse_shard(args.shard) if args.shard else None
    # The CLI owns this process, so it may tune the allocator as pool workers do. Images are decoded
    # in child processes even with one worker (isolate=True): a native crash in a decoder fails one
    # image (DECODE_CRASH), never the command.
    reuse_freed_memory()
    limits = DEFAULT_LIMITS if args.max_pixels is None else DecodeLimits(max_pixels=args.max_pixels)
    result = preprocess(args.input, args.out, options, workers=args.workers, shard=shard, adapter=args.adapter,
                        limits=limits, retry_failed=args.retry_failed, isolate=True,
                        timeout=DEFAULT_IMAGE_TIMEOUT if args.timeout is None else (args.timeout or None))
    print(result.summary())
    for (file, reason), code in zip(result.failures[:10], result.codes, strict=False):
        print(f"  failed [{code}]: {reason if reason.startswith(file) else f'{file}: {reason}'}")
    if len(result.failures) > 10:
        print(f"  ... {len(result.failures) - 10} more in failures.csv")
    if result.failures:
        print(result.failure_table())
    if args.merge and shard is not None:
        print(f"merged -> {merge_shards(args.out)}")
    return 0 if result.processed + result.skipped > 0 else 1


def _j2k_reduce(text: str) -> int | str:
    """``--j2k-reduce``: ``auto`` or a level, checked up front (:func:`mammoclip.data.preprocess.parse_j2k_reduce`)."""
    from mammoclip.data.preprocess import parse_j2k_reduce
    from mammoclip.errors import ConfigError

    try:
        return parse_j2k_reduce(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _merge(args: argparse.Namespace) -> int:
    from mammoclip.data.preprocess import merge_shards

    print(f"merged -> {merge_shards(args.out)}")
    return 0
