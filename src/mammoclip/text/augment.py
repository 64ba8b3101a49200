"""Seeded, pluggable report-text augmentation.

The original augments only by EN->IT->EN back-translation with hub-downloaded MarianMT models, and
its sentence shuffle is a no-op (docs/original.md §2.1, §2.2). Here each augmenter is a small
dataclass registered by name (:func:`register_augmenter`); :func:`build_augmenter` turns a spec
into a :class:`Compose` with its own seeded generator, and every call may instead take the
caller's :class:`numpy.random.Generator` (one per data-loader worker, say) so runs are repeatable.

Augmenters work on sentences found by :func:`mammoclip.text.reports.split_sentences`, so apply
them before the paper's period-stripping normalisation.

Back-translation loads translation models from local folders only (``transformers`` is imported
when it first runs); nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mammoclip.errors import ConfigError
from mammoclip.text.reports import split_sentences


class TextAugmenter(Protocol):
    """Anything that maps ``(text, rng)`` to new text."""

    def __call__(self, text: str, rng: np.random.Generator) -> str: ...


AUGMENTERS: dict[str, type] = {}


def register_augmenter(name: str) -> Callable[[type], type]:
    """Class decorator that makes an augmenter buildable by ``name`` in :func:`build_augmenter`."""

    def wrap(cls: type) -> type:
        if name in AUGMENTERS:
            raise ValueError(f"augmenter {name!r} is already registered")
        AUGMENTERS[name] = cls
        return cls

    return wrap


def list_augmenters() -> list[str]:
    """Names of the registered augmenters."""
    return sorted(AUGMENTERS)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


@register_augmenter("shuffle")
@dataclass
class SentenceShuffle:
    """Shuffle the sentences of a report (with probability ``p``).

    Sentence order carries little meaning in findings; the original meant to do this but never
    assigned the shuffled result (docs/original.md §2.2).
    """

    p: float = 1.0  # probability of shuffling a given text

    def __post_init__(self) -> None:
        _check_probability("shuffle p", self.p)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        sentences = split_sentences(text)
        if len(sentences) < 2 or rng.random() >= self.p:
            return text
        return " ".join(sentences[i] for i in rng.permutation(len(sentences)))


@register_augmenter("dropout")
@dataclass
class SentenceDropout:
    """Drop each sentence with probability ``p``, keeping at least ``min_keep``."""

    p: float = 0.2  # per-sentence drop probability
    min_keep: int = 1  # never leave fewer sentences than this

    def __post_init__(self) -> None:
        _check_probability("dropout p", self.p)
        if self.min_keep < 1:
            raise ConfigError(f"dropout min_keep must be >= 1, got {self.min_keep}")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        sentences = split_sentences(text)
        if len(sentences) <= self.min_keep:
            return text
        keep = rng.random(len(sentences)) >= self.p
        if keep.sum() < self.min_keep:
            keep[rng.choice(len(sentences), self.min_keep, replace=False)] = True
        return " ".join(s for s, k in zip(sentences, keep) if k)


@cache
def _builtin_lexicon() -> tuple[tuple[str, ...], ...]:
    text = resources.files("mammoclip.text").joinpath("prompt_data", "lexicon.json").read_text(encoding="utf-8")
    return tuple(tuple(g) for g in json.loads(text)["groups"])


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@register_augmenter("lexicon")
@dataclass
class LexiconParaphrase:
    """Swap mammography terms for synonyms from the BI-RADS lexicon ("oval" <-> "ovoid").

    Each occurrence of a phrase from a synonym group is replaced with probability ``p`` by another
    member of its group, keeping its capitalisation. Groups never touch laterality, sizes,
    categories or negations, so the meaning is kept.
    """

    p: float = 0.5  # replacement probability per matched phrase
    lexicon: str | None = None  # JSON file {"groups": [[...], ...]}; None = the built-in lexicon
    groups: tuple[tuple[str, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_probability("lexicon p", self.p)
        if self.lexicon is None:
            self.groups = _builtin_lexicon()
        else:
            path = Path(self.lexicon)
            try:
                groups = json.loads(path.read_text(encoding="utf-8"))["groups"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{path}: cannot read a lexicon {{'groups': [[...]]}} ({err})") from None
            if not all(isinstance(g, list) and len(g) >= 2 and all(isinstance(w, str) and w for w in g)
                       for g in groups):
                raise ConfigError(f"{path}: every lexicon group must list at least two phrases")
            self.groups = tuple(tuple(g) for g in groups)
        self._group_of = {w.lower(): g for g in self.groups for w in g}
        phrases = sorted(self._group_of, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in phrases) + r")(?![\w-])", re.I)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        def swap(match: re.Match[str]) -> str:
            found = match.group(0)
            if rng.random() >= self.p:
                return found
            others = [w for w in self._group_of[found.lower()] if w.lower() != found.lower()]
            return _match_case(found, others[int(rng.integers(len(others)))])

        return self._pattern.sub(swap, text)


@register_augmenter("backtranslate")
@dataclass
class BackTranslation:
    """Translate to a pivot language and back with local seq2seq models (MarianMT-style).

    The original's recipe (docs/original.md §2.1: EN->IT->EN, sampling, 5 beams, temperature 1.5) with
    models the user has on disk, e.g. ``Helsinki-NLP/opus-mt-en-it`` and ``opus-mt-it-en`` saved
    with ``save_pretrained``. Generation is seeded from the call's generator.
    """

    forward_model: str | None = None  # local folder of the English -> pivot model (+ tokenizer)
    backward_model: str | None = None  # local folder of the pivot -> English model (+ tokenizer)
    p: float = 1.0  # probability of back-translating a given text
    temperature: float = 1.5  # sampling temperature (docs/original.md §2.1)
    num_beams: int = 5  # beams (docs/original.md §2.1)
    do_sample: bool = True  # sample rather than decode greedily (docs/original.md §2.1)
    max_length: int = 256  # longest generated sequence, tokens
    device: str = "cpu"  # torch device of both models
    _models: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_probability("backtranslate p", self.p)
        for option in ("forward_model", "backward_model"):
            value = getattr(self, option)
            if not value:
                raise ConfigError(
                    f"backtranslate needs {option}=<local folder of a translation model>; nothing is "
                    "downloaded, save e.g. Helsinki-NLP/opus-mt-en-it with save_pretrained first"
                )
            if not Path(value).is_dir():
                raise ConfigError(f"backtranslate {option}: {value} is not a folder")
        if self.temperature <= 0 or self.num_beams < 1 or self.max_length < 1:
            raise ConfigError("backtranslate needs temperature > 0, num_beams >= 1 and max_length >= 1")

    def _load(self) -> list[Any]:
        if not self._models:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            for folder in (str(self.forward_model), str(self.backward_model)):  # checked in __post_init__
                try:
                    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                    model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True)
                except (OSError, ValueError) as err:
                    raise ConfigError(f"backtranslate: cannot load a translation model from {folder} ({err})") from None
                self._models.append((tokenizer, model.to(self.device).eval()))
        return self._models

    def translate(self, texts: Sequence[str], leg: int, seed: int) -> list[str]:
        """Translate a batch with one leg (0 = forward, 1 = backward)."""
        import torch

        tokenizer, model = self._load()[leg]
        batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                          max_length=self.max_length).to(self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=self.do_sample, num_beams=self.num_beams,
                                 temperature=self.temperature, max_length=self.max_length)
        return tokenizer.batch_decode(out, skip_special_tokens=True)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        if not text.strip() or rng.random() >= self.p:
            return text
        seed = int(rng.integers(2**31))
        pivot = self.translate([text], 0, seed)
        return self.translate(pivot, 1, seed)[0].lower()


class Compose:
    """Apply augmenters in order, with a seeded generator of its own.

    Args:
        augmenters: The augmenters.
        seed: Seed of the internal generator used when a call brings no ``rng``.
    """

    def __init__(self, augmenters: Iterable[TextAugmenter], seed: int | None = 0) -> None:
        self.augmenters = list(augmenters)
        self.rng = np.random.default_rng(seed)

    def __call__(self, text: str, rng: np.random.Generator | None = None) -> str:
        rng = self.rng if rng is None else rng
        for augment in self.augmenters:
            text = augment(text, rng)
        return text

    def __repr__(self) -> str:
        return f"Compose({self.augmenters!r})"


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _parse_spec(spec: str | Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(spec, str):
        items: list[tuple[str, dict[str, Any]]] = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, args = part.partition(":")
            kwargs = {}
            for pair in filter(None, args.split(";")):
                key, eq, value = pair.partition("=")
                if not eq:
                    raise ConfigError(f"augmenter spec {part!r}: options are written key=value;key=value")
                kwargs[key.strip()] = _parse_value(value.strip())
            items.append((name.strip(), kwargs))
        return items
    if isinstance(spec, Mapping):
        return [(str(k), dict(v or {})) for k, v in spec.items()]
    out = []
    for item in spec:
        if isinstance(item, str):
            out.extend(_parse_spec(item))
        elif isinstance(item, Mapping) and "name" in item:
            out.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        else:
            raise ConfigError(f"augmenter spec item {item!r}: expected a name or {{'name': ..., options}}")
    return out


def build_augmenter(spec: str | Mapping[str, Any] | Sequence[Any] | None, seed: int | None = 0) -> Compose:
    """Build a :class:`Compose` from a spec.

    Args:
        spec: ``"shuffle,dropout:p=0.3,lexicon:p=0.5"`` (options ``key=value`` separated by ``;``),
            a mapping ``{"dropout": {"p": 0.3}}``, or a list of names / ``{"name": ..., **options}``.
            ``None`` or ``""`` gives an identity.
        seed: Seed of the composed augmenter's generator.

    Raises:
        ConfigError: Unknown augmenter or option, or an invalid value.

    Example:
        >>> aug = build_augmenter("shuffle,lexicon:p=1", seed=0)
        >>> aug("Oval mass. No calcifications.")  # doctest: +SKIP
        'No calcifications. Ovoid mass.'
    """
    augmenters = []
    for name, kwargs in _parse_spec(spec or []):
        cls = AUGMENTERS.get(name)
        if cls is None:
            raise ConfigError(f"unknown text augmenter {name!r}; known: {list_augmenters()}")
        try:
            augmenters.append(cls(**kwargs))
        except TypeError as err:
            raise ConfigError(f"augmenter {name!r}: {err}") from None
    return Compose(augmenters, seed)
