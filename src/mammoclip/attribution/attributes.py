"""Attributes and their text embeddings (Mammo-FActOR step 1, docs/original.md §7).

An attribute is a name, the manifest label column that says which images show it, and sentences
that describe it. Built-in attributes (``mass``, ``calcification``, ``distortion``, ``asymmetry``,
``malignancy`` and their aliases) take their sentences from the prompt data files: the positive
class of the zero-shot ``ensemble`` prompts plus the first positive finding template
(:mod:`mammoclip.text.prompts`). A user may add sentences to a built-in attribute or define a new
one (e.g. ``"spiculated mass"`` with label column ``mass``).

The embedding of an attribute is the original's recipe: every sentence through the text tower and
the text projection, L2-normalised, averaged over the sentences, normalised again. Embeddings are
cached per checkpoint: the key hashes the text tower and projection weights (nothing else changes
them) and the sentences.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammoclip.errors import ConfigError, DataError
from mammoclip.text.prompts import (
    canonical_finding,
    finding_sentence,
    read_json_object,
    zero_shot_prompts,
    zero_shot_task,
)


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute: what it is called, which label column marks it, which sentences describe it."""

    #: Name used in file names, heads and tables (``mass``, ``spiculated mass``).
    name: str
    #: Manifest 0/1 column of the images that show the attribute (also the truth-box label).
    label_column: str
    #: Sentences whose mean embedding stands for the attribute (never empty).
    sentences: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("an attribute needs a non-empty name")
        if not self.sentences or not all(isinstance(s, str) and s.strip() for s in self.sentences):
            raise ConfigError(
                f"attribute {self.name!r} has no prompts: give it sentences (a built-in attribute name, "
                "or --sentences FILE with {name: {\"label\": column, \"sentences\": [...]}})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label_column": self.label_column, "sentences": list(self.sentences)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributeSpec:
        return cls(str(data["name"]), str(data["label_column"]), tuple(str(s) for s in data["sentences"]))


def builtin_attribute(name: str) -> AttributeSpec | None:
    """The built-in attribute ``name`` (a binary zero-shot task or an alias), or None when there is none.

    Its sentences are the zero-shot ``ensemble`` prompts of the positive class followed by the first
    positive finding template with its slots left at their first (empty) value.
    """

    try:
        task = zero_shot_task(name)
    except ConfigError:
        return None
    if len(task.classes) != 2:
        return None
    sentences = list(zero_shot_prompts(task.name, "ensemble")[task.classes[1]])
    try:
        sentences.append(finding_sentence(canonical_finding(task.label_column), True, None))
    except ConfigError:
        pass
    return AttributeSpec(task.name, task.label_column, tuple(dict.fromkeys(sentences)))


def read_sentence_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``{name: [sentences]}`` or ``{name: {"label": column, "sentences": [...]}}`` from JSON.

    Raises:
        DataError: missing file, bad JSON or layout; the message names the file and the key.
    """
    path = Path(path)
    data = read_json_object(path, "sentence file", "{attribute: [sentences]}")
    out: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        entry = {"sentences": value} if isinstance(value, list) else value
        if not isinstance(entry, dict) or not isinstance(entry.get("sentences", []), list):
            raise DataError(f"{path}: attribute {name!r} must be a list of sentences or "
                            "{\"label\": column, \"sentences\": [...]}")
        out[str(name)] = {"label": entry.get("label"), "sentences": [str(s) for s in entry.get("sentences", [])]}
    return out


def resolve_attributes(
    names: Sequence[str], extra: Mapping[str, Mapping[str, Any]] | None = None
) -> list[AttributeSpec]:
    """Attribute specs for ``names``: built-in sentences plus the user's, or the user's alone.

    Args:
        names: Attribute names, in head order.
        extra: ``name -> {"label": column or None, "sentences": [...]}`` (e.g. from
            :func:`read_sentence_file`). For a built-in attribute the sentences are added to its own
            and ``label`` may override its column; a new attribute needs ``label`` and sentences.

    Raises:
        ConfigError: an attribute with no prompts, no label column, or a name given twice.
    """
    extra = extra or {}
    specs: list[AttributeSpec] = []
    for name in names:
        user = extra.get(name, {})
        base = builtin_attribute(name)
        sentences = [*(base.sentences if base else ()), *user.get("sentences", [])]
        label = user.get("label") or (base.label_column if base else None)
        if not sentences:
            raise ConfigError(
                f"attribute {name!r} has no prompts: it is not a built-in attribute (mass, calcification, "
                "distortion, asymmetry, malignancy) and no sentences were given for it")
        if label is None:
            raise ConfigError(f"attribute {name!r}: name the manifest label column it stands for (\"label\")")
        specs.append(AttributeSpec(base.name if base else name, str(label),
                                   tuple(dict.fromkeys(sentences))))
    seen = [s.name for s in specs]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"attributes given twice: {seen}")
    return specs


def text_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the text tower and text projection weights: what attribute embeddings depend on."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(("text_tower.", "text_projection.")):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


#: In-process cache: (text fingerprint, sentences key) -> (A, D) embeddings.
_MEMORY: dict[tuple[str, str], np.ndarray] = {}


def _sentences_key(specs: Sequence[AttributeSpec]) -> str:
    return hashlib.sha256(json.dumps([s.to_dict() for s in specs]).encode()).hexdigest()


@torch.no_grad()
def attribute_embeddings(
    model: Any, specs: Sequence[AttributeSpec], *, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """``(A, D)`` unit vectors, one per attribute: mean of its normalised sentence embeddings, renormalised.

    Cached in memory and, with ``cache_dir``, on disk as ``attributes-<key>.npz`` where the key
    hashes the checkpoint's text weights and the attribute sentences.
    """
    from mammoclip.evaluate.zeroshot import class_embeddings

    key = (text_fingerprint(model), _sentences_key(specs))
    if key in _MEMORY:
        return torch.from_numpy(_MEMORY[key].copy())
    path = Path(cache_dir) / f"attributes-{key[0][:16]}-{key[1][:16]}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if list(data["names"]) == [s.name for s in specs]:
                _MEMORY[key] = data["embeddings"].astype(np.float32)
                return torch.from_numpy(_MEMORY[key].copy())
    was_training = model.training
    model.eval()
    try:
        emb = class_embeddings(model, {s.name: list(s.sentences) for s in specs}).cpu()  # (A, D)
    finally:
        model.train(was_training)
    _MEMORY[key] = emb.numpy().astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, names=np.array([s.name for s in specs]), embeddings=_MEMORY[key])
        tmp.replace(path)
    return emb.float()
