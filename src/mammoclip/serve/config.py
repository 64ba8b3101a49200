"""The server's one typed configuration, validated before anything is loaded or bound.

The safety defaults live here, not in argparse, so a script building :class:`ServeConfig` directly
gets them too: loopback bind, no PHI in logs or responses, a bounded upload, a bounded decode budget,
a per-request timeout and a bounded number of requests in flight.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from mammoclip.errors import ConfigError
from mammoclip.imaging.dicom import DEFAULT_LIMITS

#: Host names that resolve to this machine only (an IP address is checked with ``is_loopback``).
LOOPBACK_NAMES: frozenset[str] = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True when ``host`` can only be reached from this machine (127.0.0.0/8, ::1, ``localhost``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat as exposed


@dataclass(frozen=True)
class ServeConfig:
    """What ``mammoclip serve`` loads and how it guards itself.

    Raises:
        ConfigError: from ``__post_init__`` for a bad value, and when ``host`` is not a loopback
            address but no ``token`` is set (the server refuses to start exposed without auth).
    """

    #: The Mammo-CLIP model: a checkpoint folder, an official ``.tar`` or a registered name.
    checkpoint: str
    #: A detector checkpoint folder (``mammoclip detect train``); None: ``/v1/detect`` answers 501.
    detector: str | None = None
    #: A FActOR mapper folder (``mammoclip factor train``); None: ``/v1/explain`` answers 501.
    factor: str | None = None
    #: Address to bind; anything but loopback needs ``token``.
    host: str = "127.0.0.1"
    #: TCP port (0: any free port, for tests).
    port: int = 8000
    #: Bearer token every ``/v1/*`` and ``/metrics`` request must carry; None: no auth (loopback only).
    token: str | None = None
    #: Largest request body in bytes; a larger upload is refused with 413 while it streams in.
    max_upload_bytes: int = 64 << 20
    #: Decode budget: declared rows x columns x samples x frames of a DICOM (or width x height of a
    #: PNG/JPEG) above this is refused with 413 ``TOO_LARGE`` before any pixel is decoded.
    max_pixels: int = DEFAULT_LIMITS.max_pixels
    #: Seconds one request may take end to end (upload excluded) before it is answered 504.
    timeout_s: float = 60.0
    #: Model requests in flight (running or queued for the model); one more is answered 503.
    max_concurrency: int = 16
    #: Largest number of images in one forward pass; 1 turns micro-batching off.
    batch_max_size: int = 8
    #: How long the first image of a batch waits for company, in milliseconds.
    batch_max_wait_ms: float = 5.0
    #: Torch device ("cpu", "cuda", "cuda:1"); None: CUDA when available, else the CPU.
    device: str | None = None
    #: Put patient identifiers (PatientID, Study/SOP Instance UIDs) in responses and the access log.
    log_phi: bool = False
    #: Seconds ``Retry-After`` tells a client refused with 503 to wait.
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not str(self.checkpoint).strip():
            raise ConfigError("serve: --checkpoint is required (a checkpoint folder or a registered model name)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be in [0, 65535], got {self.port}")
        for name in ("max_upload_bytes", "max_pixels", "max_concurrency", "batch_max_size", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve: {name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"serve: timeout_s must be a number > 0, got {self.timeout_s!r}")
        if not (math.isfinite(self.batch_max_wait_ms) and self.batch_max_wait_ms >= 0):
            raise ConfigError(f"serve: batch_max_wait_ms must be a number >= 0, got {self.batch_max_wait_ms!r}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("serve: the token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"serve: refusing to bind {self.host!r} without a token: anyone on the network "
                              "could send images; pass --token (or bind 127.0.0.1 behind a reverse proxy)")

    @property
    def batching(self) -> bool:
        """Whether requests that arrive together share a forward pass."""
        return self.batch_max_size > 1
