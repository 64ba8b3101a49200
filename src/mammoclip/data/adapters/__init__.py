"""Adapters: turn a public dataset's native layout into a :class:`~mammoclip.data.manifest.Bundle`.

Each adapter module registers itself with :func:`register_adapter` under a name and provides
``detect(source) -> bool`` (does this folder/file look like my format?) and
``load(source, **options) -> Bundle``. :func:`build_bundle` picks one by name or by detection, so
new sources are added by writing a module, never by editing a chain of ifs.

Formats (docs/original.md §8): ``folder`` (DICOM files in any layout, grouped by folder names or by
DICOM tags, + reports and a labels CSV), ``official_csv`` (the original image-text tables), ``vindr`` (VinDr-Mammo CSVs), ``rsna``
(``train.csv``), ``cbis_ddsm`` (case-description CSVs), ``synthetic`` (our cohort).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoclip.data.manifest import Bundle
from mammoclip.errors import ConfigError, DataError


@dataclass(frozen=True)
class Adapter:
    """A registered source format."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Bundle]
    description: str


_ADAPTERS: dict[str, Adapter] = {}
_MODULES = ("synthetic", "vindr", "rsna", "cbis_ddsm", "official_csv", "folder")


def register_adapter(name: str, description: str) -> Callable[[type], type]:
    """Class decorator: register a class with static ``detect`` and ``load`` under ``name``."""

    def wrap(cls: type) -> type:
        _ADAPTERS[name] = Adapter(name, cls.detect, cls.load, description)  # type: ignore[attr-defined]
        return cls

    return wrap


def _discover() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def list_adapters() -> dict[str, str]:
    """Adapter names (in detection order) -> one-line descriptions."""
    _discover()
    return {name: _ADAPTERS[name].description for name in _MODULES if name in _ADAPTERS}


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    _discover()
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown adapter {name!r}; known: {sorted(_ADAPTERS)}")
    return _ADAPTERS[name]


def build_bundle(source: str | Path, adapter: str | None = None, **options: Any) -> Bundle:
    """Build a bundle from ``source`` with the named adapter, or the first whose ``detect`` matches.

    Raises:
        DataError: source missing or no adapter recognises it.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"source not found: {source}")
    if adapter is not None:
        return get_adapter(adapter).load(source, **options)
    for name in list_adapters():
        if _ADAPTERS[name].detect(source):
            return _ADAPTERS[name].load(source, **options)
    raise DataError(f"{source}: no adapter recognises this source; pass --adapter with one of "
                    f"{list(list_adapters())}")
