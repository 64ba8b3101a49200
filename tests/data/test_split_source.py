"""Split provenance: a manifest records when its splits were drawn by hash (``split_source``), older
manifests without the column read as user-chosen splits, and the column survives save/load."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammoclip.data.manifest import SPLIT_SOURCE_COLUMN, load_bundle, splits_from_hash


def test_splits_from_hash_needs_every_row_marked(synthetic_cohort: Path, tmp_path: Path) -> None:
    bundle = load_bundle(synthetic_cohort)
    assert SPLIT_SOURCE_COLUMN not in bundle.images.columns and not splits_from_hash(bundle.images)
    bundle.images[SPLIT_SOURCE_COLUMN] = "hash"
    assert splits_from_hash(bundle.images)
    again = load_bundle(bundle.save(tmp_path / "c"))
    assert splits_from_hash(again.images)
    mixed = again.images.copy()
    mixed.loc[0, SPLIT_SOURCE_COLUMN] = "manifest"
    assert not splits_from_hash(mixed)
    assert not splits_from_hash(pd.DataFrame(columns=[SPLIT_SOURCE_COLUMN]))
