"""The synthetic cohort (:mod:`mammoclip.synthetic`): already a bundle, recognised by ``cohort.json``."""

from __future__ import annotations

from pathlib import Path

from mammoclip.data.adapters import register_adapter
from mammoclip.data.manifest import MANIFEST_FILE, Bundle, load_bundle


@register_adapter("synthetic", "synthetic cohort folder (manifest.csv + cohort.json)")
class SyntheticAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and (source / "cohort.json").exists() and (source / MANIFEST_FILE).exists()

    @staticmethod
    def load(source: Path) -> Bundle:
        return load_bundle(source if source.is_file() else source / MANIFEST_FILE)
