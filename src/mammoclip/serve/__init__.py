"""``mammoclip serve``: the HTTP API and web viewer (docs/serve.md).

>>> from mammoclip.serve import ServeConfig, create_app, run
>>> app = create_app(ServeConfig(checkpoint="runs/pretrain/best"))  # doctest: +SKIP

FastAPI and uvicorn are the ``serve`` extra (``pip install 'mammoclip[serve]'``); they are imported
only when an app is built, so importing this package (and :class:`ServeConfig`) does not need them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from mammoclip.serve.config import ServeConfig, is_loopback

__all__ = ["ServeConfig", "create_app", "is_loopback", "run"]

#: Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before it closes their connections.
GRACEFUL_SHUTDOWN_S: int = 30


def create_app(cfg: ServeConfig, engine: Any = None) -> Any:
    """The FastAPI app (see :func:`mammoclip.serve.app.create_app`)."""
    from mammoclip.serve.app import create_app as _create

    return _create(cfg, engine)


def access_log_to(stream: Any = None) -> logging.Handler:
    """Send the JSON-lines access log to ``stream`` (default stderr), one object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("mammoclip.serve.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def build_server(cfg: ServeConfig, app: Any = None) -> Any:
    """A ``uvicorn.Server`` for ``cfg`` (not started): its own access log off (ours has no query strings),
    graceful shutdown that lets in-flight requests finish."""
    import uvicorn

    config = uvicorn.Config(app if app is not None else create_app(cfg), host=cfg.host, port=cfg.port,
                            access_log=False, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            proxy_headers=False, server_header=False)
    return uvicorn.Server(config)


def run(cfg: ServeConfig) -> None:
    """Load the models, then serve until SIGINT/SIGTERM (in-flight requests finish first)."""
    access_log_to()
    server = build_server(cfg)
    print(f"mammoclip serve: http://{cfg.host}:{cfg.port}/  (API docs at /docs, auth "
          f"{'on' if cfg.token else 'off'})", file=sys.stderr, flush=True)
    server.run()
