"""torch Datasets over a manifest bundle.

Items are dicts; images are returned as stored (uint8/uint16, ``(1, H, W)``) and normalised on the
device by :func:`mammoclip.data.transforms.normalize_images`.

Pre-training datasets (:class:`ImageTextDataset`, :class:`LabelTextDataset`, :class:`MixedDataset`)
return two views and two caption strings per breast; :class:`PairCollate` tokenises them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset

from mammoclip.data.manifest import Bundle
from mammoclip.data.transforms import ArrayTransform
from mammoclip.imaging.imageio import read_image


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``size`` = (height, width) with area interpolation (no-op when equal)."""
    import cv2

    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8/uint16 array -> ``(1, H, W)`` tensor of the same dtype (no copy to float)."""
    return torch.from_numpy(np.ascontiguousarray(image))[None]


class ImageDataset(Dataset):
    """One item per manifest row: ``{"image": (1, H, W) uint, "index": int}``.

    Used for inference (zero-shot, embeddings, probe features). Images whose size differs from
    ``image_size`` are resized with area interpolation.
    """

    def __init__(self, bundle: Bundle, image_size: tuple[int, int] | None = None) -> None:
        self.bundle = bundle
        self.paths = [bundle.abspath(p) for p in bundle.images["path"].astype(str)]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = read_image(self.paths[index])
        if self.image_size is not None:
            image = resize_to(image, self.image_size)
        return {"image": to_tensor(image), "index": index}


# ------------------------------------------------------------------------ pre-training datasets ---
# One item per breast (study x laterality): two views and two captions (docs/original.md §2.2, §4).
# Every random choice of an item (views, captions, augmentation) comes from a generator seeded by
# (base seed, epoch, index), so the data order and content depend neither on the number of workers
# nor on where a resumed run starts.

#: Label columns turned into sentences for image-label data (``malignant`` has no finding template).
TEXT_LABEL_COLUMNS: tuple[str, ...] = ("mass", "calcification", "distortion", "asymmetry")
#: Preferred view pair; any two distinct views are used when a breast lacks CC or MLO.
VIEW_ORDER: tuple[str, ...] = ("CC", "MLO")

TextAugmenter = Callable[[str, np.random.Generator], str]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item in one epoch (independent of workers and iteration order)."""
    return np.random.default_rng([seed, epoch, index])


def _breasts(images: pd.DataFrame) -> list[dict[str, list[int]]]:
    """Group row positions by breast (study x laterality), then by view."""
    groups = []
    keys = ["study_id", "laterality"] if "study_id" in images.columns else ["patient_id", "laterality"]
    for _, frame in images.groupby(keys, sort=True):
        views: dict[str, list[int]] = {}
        for pos, view in zip(frame.index, frame["view"].astype(str)):
            views.setdefault(view, []).append(int(pos))
        groups.append(views)
    return groups


class _BreastPairs(Dataset):
    """Shared machinery: breast grouping, view sampling, image reading and augmentation."""

    def __init__(self, bundle: Bundle, image_size: tuple[int, int] | None, augment: ArrayTransform | None,
                 train: bool, seed: int) -> None:
        self.bundle = bundle
        self.images = bundle.images.reset_index(drop=True)
        self.paths = [bundle.abspath(p) for p in self.images["path"].astype(str)]
        self.image_size = image_size
        self.augment = augment
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.breasts: list[dict[str, list[int]]] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the items use (called by the loop)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.breasts)

    def _pick_views(self, views: dict[str, list[int]], rng: np.random.Generator) -> tuple[int, int]:
        """Rows of the two images: one image of each of two views, in random order (HEAD behaviour:
        CC and MLO of the same breast, correctly paired); one view only: two different images of it
        when available, else the same image twice (augmented independently)."""
        names = [v for v in VIEW_ORDER if v in views] + sorted(v for v in views if v not in VIEW_ORDER)
        if len(names) >= 2:
            pair = names[:2]
            if self.train:
                pair = [pair[i] for i in rng.permutation(2)]
                return int(rng.choice(views[pair[0]])), int(rng.choice(views[pair[1]]))
            return views[pair[0]][0], views[pair[1]][0]
        rows = views[names[0]]
        if len(rows) >= 2:
            picked = rng.choice(rows, size=2, replace=False) if self.train else rows[:2]
            return int(picked[0]), int(picked[1])
        return rows[0], rows[0]

    def _image(self, row: int, rng: np.random.Generator) -> torch.Tensor:
        image = read_image(self.paths[row])
        if self.image_size is not None:
            image = resize_to(image, self.image_size)
        if self.augment is not None and self.train:
            image = self.augment(image, rng)
        return to_tensor(image)

    def _texts(self, index: int, rows: tuple[int, int], rng: np.random.Generator) -> tuple[str, str]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = item_rng(self.seed, self.epoch, index)
        breast = self.breasts[index]
        rows = self._pick_views(breast, rng)
        text, text2 = self._texts(index, rows, rng)
        return {"image": self._image(rows[0], rng), "image_view2": self._image(rows[1], rng),
                "text": text, "text2": text2, "index": index}


class ImageTextDataset(_BreastPairs):
    """Image-text pairs: two views of a breast and two captions of its report (docs/original.md §2.2).

    Captions: with two or more non-empty sections (findings, impression), two section indices are
    drawn independently with replacement and each pick uses its augmented version with probability
    0.5; with one section the captions are (original, augmented) in random order. Validation
    (``train=False``) is deterministic: CC/MLO and findings/impression.

    A screening report describes both breasts, but each item is one breast. With ``per_breast``
    (the default) each section is cut down to the sentences about this breast or about both
    (:meth:`mammoclip.text.reports.ParsedReport.captions`), so the left breast with a mass is not
    paired with "no suspicious findings in the right breast"; the original pairs every breast with
    the whole report, which leaves the two breasts of a study with identical captions. A section
    with no sentence about this breast is left out (an impression about the other breast only);
    when no section has one, the whole sections are used. Reports are parsed lazily, once per item
    and worker.

    Args:
        bundle: Manifest bundle; rows without a report (or whose report is empty) are skipped.
        image_size: (H, W) the images are resized to (None: as stored).
        augment: Image augmentation (train only), see :func:`mammoclip.data.transforms.build_augmentation`.
        text_augmenter: ``(text, rng) -> text``; None uses :func:`default_text_augmenter`.
        train: Random draws (train) or deterministic items (validation).
        seed: Base seed of the per-item generators.
        sections: Report sections used as captions.
        per_breast: Keep only each breast's sentences of a section (see above); False pairs every
            breast with the whole section text, as the original does.
    """

    def __init__(self, bundle: Bundle, image_size: tuple[int, int] | None = None, *,
                 augment: ArrayTransform | None = None, text_augmenter: TextAugmenter | None = None,
                 train: bool = True, seed: int = 0, sections: tuple[str, ...] = ("findings", "impression"),
                 per_breast: bool = True) -> None:
        super().__init__(bundle, image_size, augment, train, seed)
        self.text_augmenter = text_augmenter if text_augmenter is not None else default_text_augmenter()
        self.per_breast = per_breast
        reports = bundle.reports.set_index("report_id") if len(bundle.reports) else None
        self.captions: list[list[str]] = []
        self._section_names: list[list[str]] = []
        self._sides: list[str] = []
        self._breast_captions: dict[int, list[str]] = {}
        if reports is None or "report_id" not in self.images.columns:
            return
        for breast in _breasts(self.images):
            rid = self.images.loc[next(iter(breast.values()))[0], "report_id"]
            if pd.isna(rid) or rid not in reports.index:
                continue
            row = reports.loc[rid]
            named = [(s, str(row[s]).strip()) for s in sections if s in row.index and not pd.isna(row[s])]
            named = [(s, t) for s, t in named if t]
            if named:
                first = next(iter(breast.values()))[0]
                self.breasts.append(breast)
                self.captions.append([t for _, t in named])
                self._section_names.append([s for s, _ in named])
                self._sides.append(str(self.images.loc[first, "laterality"]))

    def breast_captions(self, index: int) -> list[str]:
        """The captions of item ``index``: each section cut to this breast's sentences (``per_breast``)."""
        texts = self.captions[index]
        side = self._sides[index]
        if not self.per_breast or side not in ("L", "R"):
            return texts
        cached = self._breast_captions.get(index)
        if cached is None:
            from mammoclip.text.reports import SECTION_HEADERS, parse_report

            cached = []
            for name, text in zip(self._section_names[index], texts):
                if name not in SECTION_HEADERS:
                    cached.append(text)
                    continue
                # Re-parse one section under its own header, so its sentences keep their section.
                parsed = parse_report(f"{name.upper()}: {text}", deidentify_text=False)
                cached.extend(parsed.captions(side, sections=(name,)))
            # A section that says nothing about this breast is left out; when none does, the
            # whole sections are the best captions there are.
            cached = cached or texts
            self._breast_captions[index] = cached
        return cached

    def _maybe_augment(self, text: str, rng: np.random.Generator) -> str:
        if self.text_augmenter is None or rng.random() >= 0.5:
            return text
        return self.text_augmenter(text, rng)

    def _texts(self, index: int, rows: tuple[int, int], rng: np.random.Generator) -> tuple[str, str]:
        texts = self.breast_captions(index)
        if not self.train:
            return texts[0], texts[1] if len(texts) > 1 else texts[0]
        if len(texts) >= 2:
            a, b = rng.integers(len(texts), size=2)
            return self._maybe_augment(texts[a], rng), self._maybe_augment(texts[b], rng)
        aug = self.text_augmenter(texts[0], rng) if self.text_augmenter is not None else texts[0]
        return (texts[0], aug) if rng.random() < 0.5 else (aug, texts[0])


class LabelTextDataset(_BreastPairs):
    """Image-label data as text (docs/original.md §2.3): each view's labels become a short report.

    Caption 1 describes the first sampled view's labels and caption 2 the second's, through
    :func:`mammoclip.text.prompts.labels_to_text` (random templates in training, the first template
    in validation). Breasts whose rows carry no label are skipped.

    Args:
        bundle: Manifest bundle with label columns (``mass``, ``calcification``, ... and optionally
            ``density``, ``birads``).
        image_size, augment, train, seed: As in :class:`ImageTextDataset`.
        columns: Binary label columns that become finding sentences.
    """

    def __init__(self, bundle: Bundle, image_size: tuple[int, int] | None = None, *,
                 augment: ArrayTransform | None = None, train: bool = True, seed: int = 0,
                 columns: tuple[str, ...] = TEXT_LABEL_COLUMNS) -> None:
        super().__init__(bundle, image_size, augment, train, seed)
        self.columns = tuple(c for c in columns if c in self.images.columns)
        labelled = self.images[list(self.columns)].notna().any(axis=1) if self.columns else None
        if labelled is None:
            return
        for breast in _breasts(self.images):
            rows = [r for rs in breast.values() for r in rs]
            if bool(labelled.loc[rows].any()):
                self.breasts.append(breast)

    def _text_of(self, row: int, rng: np.random.Generator) -> str:
        from mammoclip.text.prompts import labels_to_text

        rec = self.images.loc[row]
        findings = {c: (None if pd.isna(rec[c]) else bool(rec[c])) for c in self.columns}
        density = rec.get("density")
        birads = rec.get("birads")
        return labels_to_text(
            findings, str(rec["laterality"]), rng if self.train else None,
            density=None if density is None or pd.isna(density) else str(density),
            birads=None if birads is None or pd.isna(birads) else int(birads),
            deterministic=not self.train,
        )

    def _texts(self, index: int, rows: tuple[int, int], rng: np.random.Generator) -> tuple[str, str]:
        return self._text_of(rows[0], rng), self._text_of(rows[1], rng)


class MixedDataset(ConcatDataset):
    """Several pre-training datasets shuffled jointly; ``set_epoch`` reaches every member."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


#: Offline caption augmentation used when none is given (a :func:`mammoclip.text.augment.build_augmenter`
#: spec): sentence shuffle + lexicon paraphrase, standing in for the original's back-translation.
DEFAULT_TEXT_AUGMENT: str = "shuffle,lexicon:p=0.5"


def default_text_augmenter(spec: str = DEFAULT_TEXT_AUGMENT) -> TextAugmenter | None:
    """The caption augmenter built from ``spec`` (None for an empty spec)."""
    if not spec:
        return None
    from mammoclip.text.augment import build_augmenter

    return build_augmenter(spec)


class PairCollate:
    """Batch pre-training items: stack the uint images, tokenise both captions with dynamic padding.

    Args:
        tokenizer: ``tok(list[str]) -> {"input_ids", "attention_mask"}`` (``mammoclip.models.get_tokenizer``).
        pad_to_multiple: Round the padded length up to a multiple of this (masked padding). Fewer
            distinct shapes: CPU kernels (oneDNN) re-plan for every new input shape, which made
            steps with a new caption length several times slower.
    """

    def __init__(self, tokenizer: Callable[[list[str]], Mapping[str, torch.Tensor]], pad_to_multiple: int = 32) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple = pad_to_multiple

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(texts)
        ids, mask = torch.as_tensor(tok["input_ids"]), torch.as_tensor(tok["attention_mask"])  # (B, L)
        extra = -ids.shape[1] % self.pad_to_multiple if self.pad_to_multiple > 1 else 0
        if extra:
            ids = torch.nn.functional.pad(ids, (0, extra), value=0)  # (B, L + extra); masked out below
            mask = torch.nn.functional.pad(mask, (0, extra), value=0)
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        t1 = self._tokenize([it["text"] for it in items])
        t2 = self._tokenize([it["text2"] for it in items])
        return {
            "image": torch.stack([it["image"] for it in items]),  # (B, 1, H, W) uint
            "image_view2": torch.stack([it["image_view2"] for it in items]),
            "input_ids": t1["input_ids"], "attention_mask": t1["attention_mask"],
            "input_ids2": t2["input_ids"], "attention_mask2": t2["attention_mask"],
            "index": torch.tensor([it["index"] for it in items]),
        }
