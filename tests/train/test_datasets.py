"""Pre-training datasets: correctly paired views, captions, seeded per-item draws, collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mammoclip.data.datasets import ImageTextDataset, LabelTextDataset, MixedDataset, PairCollate
from mammoclip.data.manifest import Bundle
from mammoclip.data.transforms import RandomAffine, build_augmentation
from mammoclip.imaging.imageio import write_png
from mammoclip.text.prompts import labels_to_text

H, W = 32, 24
VIEW_CODE = {"CC": 1000, "MLO": 2000}


def _bundle(tmp_path: Path) -> Bundle:
    """3 patients x L/R x CC/MLO; pixel value = view code + 100 * patient + 10 * (side == R)."""
    rows, reports = [], []
    for p in range(3):
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                value = VIEW_CODE[view] + 100 * p + 10 * (side == "R")
                path = tmp_path / f"p{p}_{side}_{view}.png"
                write_png(path, np.full((H, W), value, dtype=np.uint16))
                rows.append({"image_id": path.stem, "patient_id": f"p{p}", "study_id": f"s{p}", "laterality": side,
                             "view": view, "path": path.name, "split": "train", "source": "test",
                             "mass": float(p == 0 and side == "L"), "calcification": 0.0, "report_id": f"r{p}"})
        reports.append({"report_id": f"r{p}", "findings": f"findings of patient {p}",
                        "impression": f"impression of patient {p}", "history": "", "text": ""})
    return Bundle(pd.DataFrame(rows), reports=pd.DataFrame(reports), root=tmp_path)


def _decode(img: torch.Tensor) -> tuple[str, int, str]:
    v = int(img.flatten()[0])
    view = "MLO" if v >= 2000 else "CC"
    v -= VIEW_CODE[view]
    return view, v // 100, "R" if v % 100 == 10 else "L"


def test_image_text_items_pair_cc_with_mlo_of_the_same_breast(tmp_path: Path) -> None:
    ds = ImageTextDataset(_bundle(tmp_path), text_augmenter=lambda t, rng: t.upper(), seed=3)
    assert len(ds) == 6
    orders = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            v1, p1, s1 = _decode(item["image"])
            v2, p2, s2 = _decode(item["image_view2"])
            assert {v1, v2} == {"CC", "MLO"} and (p1, s1) == (p2, s2)  # never the same view twice
            assert item["image"].dtype == torch.uint16 and item["image"].shape == (1, H, W)
            for text in (item["text"], item["text2"]):
                assert f"patient {p1}" in text.lower()
            orders.add(v1)
    assert orders == {"CC", "MLO"}  # random view order


def test_validation_items_are_deterministic(tmp_path: Path) -> None:
    ds = ImageTextDataset(_bundle(tmp_path), train=False)
    a = ds[2]
    ds.set_epoch(5)
    b = ds[2]
    assert _decode(a["image"])[0] == "CC" and a["text"].startswith("findings") and a["text2"].startswith("impression")
    assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"]


def _tok(texts: list[str]) -> dict[str, torch.Tensor]:
    ids = [[len(w) for w in t.split()] for t in texts]
    n = max(len(x) for x in ids)
    return {"input_ids": torch.tensor([x + [0] * (n - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])}


@pytest.mark.slow
def test_items_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    ds = ImageTextDataset(_bundle(tmp_path), augment=build_augmentation("paper"), seed=7)
    ds.set_epoch(1)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=3, collate_fn=PairCollate(_tok), num_workers=workers)
        batches.append(list(loader))
    for a, b in zip(*batches):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert batches[0][0]["input_ids"].shape[0] == 3 and batches[0][0]["input_ids"].shape[1] % 32 == 0 and batches[0][0]["image"].shape == (3, 1, H, W)


def test_label_text_captions_follow_each_view_labels(tmp_path: Path) -> None:
    ds = LabelTextDataset(_bundle(tmp_path), seed=0)
    assert len(ds) == 6
    val = LabelTextDataset(_bundle(tmp_path), train=False)
    for i in range(len(val)):
        item = val[i]
        _, p, s = _decode(item["image"])
        mass = p == 0 and s == "L"
        assert item["text"] == labels_to_text({"mass": mass, "calcification": False}, s, deterministic=True)
    assert ds[0]["text"] != val[0]["text"] or ds[1]["text"] != val[1]["text"]  # training draws templates
    mixed = MixedDataset([ds, ImageTextDataset(_bundle(tmp_path))])
    mixed.set_epoch(2)
    assert len(mixed) == 12 and ds.epoch == 2


def test_augmentation_is_seeded_dtype_preserving_and_symmetric() -> None:
    img = (np.arange(H * W).reshape(H, W) * 50).astype(np.uint16)
    aug = build_augmentation("paper")
    a = aug(img, np.random.default_rng(1))
    b = aug(img, np.random.default_rng(1))
    assert a.dtype == np.uint16 and a.shape == img.shape and np.array_equal(a, b)
    affine = RandomAffine(rotate=20, translate=0.1, shear=0, scale=(1, 1), p=1.0)
    rng = np.random.default_rng(0)
    angles = [np.degrees(np.arctan2(m[1, 0], m[0, 0])) for m in
              (affine.sample(rng, (H, W))["matrix"] for _ in range(200))]
    assert min(angles) < -10 and max(angles) > 10 and max(abs(x) for x in angles) <= 20 + 1e-6  # ±range, not +20 always


def _two_sided_bundle(tmp_path: Path) -> Bundle:
    """One study whose report describes a left mass and a normal right breast."""
    rows = []
    for side in ("L", "R"):
        for view in ("CC", "MLO"):
            path = tmp_path / f"{side}_{view}.png"
            write_png(path, np.full((H, W), VIEW_CODE[view], dtype=np.uint16))
            rows.append({"image_id": path.stem, "patient_id": "p0", "study_id": "s0", "laterality": side,
                         "view": view, "path": path.name, "split": "train", "source": "test", "report_id": "r0"})
    reports = [{"report_id": "r0",
                "findings": "A 12 mm spiculated mass is seen in the left breast at 2 o'clock. "
                            "The right breast shows no suspicious mass or calcification. Scattered fibroglandular tissue.",
                "impression": "Left breast: spiculated mass, BI-RADS 4."}]
    return Bundle(pd.DataFrame(rows), reports=pd.DataFrame(reports), root=tmp_path)


def test_each_breast_gets_its_own_sentences(tmp_path: Path) -> None:
    bundle = _two_sided_bundle(tmp_path)
    ds = ImageTextDataset(bundle, train=False)
    by_side = {ds._sides[i]: ds.breast_captions(i) for i in range(len(ds))}
    left, right = by_side["L"], by_side["R"]
    # Left: its mass sentence and the sentence about both breasts; the impression (left only).
    assert len(left) == 2 and "spiculated mass" in left[0] and "Scattered fibroglandular" in left[0]
    assert "right breast" not in left[0] and "BI-RADS 4" in left[1]
    # Right: no word of the left mass; the left-only impression is left out, not pasted in.
    assert right == ["The right breast shows no suspicious mass or calcification. Scattered fibroglandular tissue."]
    for i in range(len(ds)):  # items use the per-breast captions
        item = ds[i]
        assert item["text"] in by_side[ds._sides[i]] and item["text2"] in by_side[ds._sides[i]]
    # The original behaviour on request: every breast gets the whole sections.
    whole = ImageTextDataset(bundle, train=False, per_breast=False)
    assert all(whole.breast_captions(i) == whole.captions[i] for i in range(len(whole)))
    assert "left breast" in whole[whole._sides.index("R")]["text"]
