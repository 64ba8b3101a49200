"""``mammoclip serve``: the HTTP API and web viewer on one loaded model (docs/serve.md)."""

from __future__ import annotations

import argparse
import os

from mammoclip.cli._options import non_negative_float, positive_float, positive_int

#: Environment variable read for the token when ``--token`` is not given (keeps it out of ``ps``).
TOKEN_ENV = "MAMMOCLIP_SERVE_TOKEN"


def _port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``."""
    p = subparsers.add_parser("serve", help="HTTP API and web viewer: zero-shot, embeddings, heatmaps, boxes")
    p.add_argument("--checkpoint", required=True, help="Mammo-CLIP checkpoint folder, official .tar or registered name")
    p.add_argument("--detector", default=None, help="detector checkpoint folder (enables /v1/detect)")
    p.add_argument("--factor", default=None, help="FActOR mapper folder (enables /v1/explain)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs a token")
    p.add_argument("--port", type=_port, default=8000, help="TCP port")
    p.add_argument("--token", default=None,
                   help=f"bearer token required on /v1/* and /metrics (default: ${TOKEN_ENV} when set)")
    p.add_argument("--max-upload-mb", type=positive_float, default=64.0, help="largest request body, MiB")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="decode budget: declared rows x columns x frames (default: the preprocess budget)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request before 504")
    p.add_argument("--max-concurrency", type=positive_int, default=16,
                   help="model requests in flight; one more gets 503 + Retry-After")
    p.add_argument("--batch-max-size", type=positive_int, default=8, help="images per forward pass (1: no batching)")
    p.add_argument("--batch-max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long the first image of a batch waits for others")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--log-phi", action="store_true",
                   help="put PatientID and study/instance UIDs in responses and the access log (off by default)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from mammoclip.serve import ServeConfig, run

    extra = {"max_pixels": args.max_pixels} if args.max_pixels is not None else {}
    cfg = ServeConfig(checkpoint=args.checkpoint, detector=args.detector, factor=args.factor, host=args.host,
                      port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
                      max_upload_bytes=int(args.max_upload_mb * (1 << 20)), timeout_s=args.timeout,
                      max_concurrency=args.max_concurrency, batch_max_size=args.batch_max_size,
                      batch_max_wait_ms=args.batch_max_wait_ms, device=args.device, log_phi=args.log_phi, **extra)
    run(cfg)
    return 0
