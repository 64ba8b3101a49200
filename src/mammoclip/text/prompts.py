"""Label -> text templates and zero-shot prompt sets.

Label-only datasets (VinDr-Mammo findings, CBIS-DDSM attributes, RSNA cancer) become training text
through sentence templates, as in the original's ``generate_report_from_labels`` (docs/original.md
§2.3): one sentence per positive finding, one per negative finding, shuffled. Unlike the original, the
templates are our own, live in JSON data files under ``prompt_data/`` (so adding a phrasing is a data
change), are sampled with an explicit :class:`numpy.random.Generator`, and ``deterministic=True``
gives a stable order (the original de-duplicated through a ``set``, so its order depended on
``PYTHONHASHSEED``).

Zero-shot prompt sets (docs/original.md §6.1) come in two styles: ``"paper"`` (the two-word pairs such
as ``["no mass", "mass"]``) and ``"ensemble"`` (several phrasings per class, averaged by the
evaluator). Class order is always label index order.

Layer 0: numpy only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.constants import BIRADS_CATEGORIES, DENSITIES
from mammoclip.errors import ConfigError, DataError

#: Prompt styles understood by :func:`zero_shot_prompts`.
PROMPT_STYLES: tuple[str, ...] = ("paper", "ensemble")

#: Side word for each laterality code used in the templates' ``{side}`` slot.
_SIDE_WORDS: dict[str | None, str] = {"R": "right", "L": "left", None: ""}
#: ``{breasts}`` slot of the density templates.
_BREASTS_WORDS: dict[str | None, str] = {"R": "the right breast", "L": "the left breast", None: "the breasts"}

_SLOT = re.compile(r"\{(\w+)\}")


@cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files("mammoclip.text").joinpath("prompt_data", name).read_text(encoding="utf-8")
    return json.loads(text)


def _tidy(sentence: str) -> str:
    """Collapse the spaces an empty slot leaves behind ("in the  right breast"); fix "a irregular"."""
    sentence = re.sub(r"\s+", " ", sentence).strip()
    sentence = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", sentence)
    return re.sub(r"\s+([,.])", r"\1", sentence)


def _pick(options: list[str], rng: np.random.Generator | None) -> str:
    if rng is None:
        return options[0]
    return options[int(rng.integers(len(options)))]


def _fill(template: str, slots: Mapping[str, Any], rng: np.random.Generator | None) -> str:
    """Fill every ``{slot}``: fixed strings as given, lists by a (seeded) choice."""

    def one(match: re.Match[str]) -> str:
        value = slots.get(match.group(1))
        if value is None:
            raise KeyError(f"template {template!r} uses unknown slot {{{match.group(1)}}}")
        return value if isinstance(value, str) else _pick(list(value), rng)

    return _tidy(_SLOT.sub(one, template))


def _laterality(laterality: str | None) -> str | None:
    if laterality is None:
        return None
    code = str(laterality).strip().upper()[:1]
    if code not in ("L", "R"):
        raise ConfigError(f"laterality must be 'L', 'R' or None, got {laterality!r}")
    return code


# --- Finding names -------------------------------------------------------------------------------


@cache
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, spec in _load("findings.json")["findings"].items():
        for alias in (name, *spec.get("aliases", ())):
            table[_key(alias)] = name
    return table


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def finding_names() -> list[str]:
    """Canonical finding names that have templates (the ten VinDr findings plus ``Malignancy``)."""
    return list(_load("findings.json")["findings"])


def canonical_finding(name: str) -> str:
    """Map a label name to its canonical finding.

    Accepts VinDr names ("Suspicious Calcification"), manifest columns ("calcification",
    "distortion", "malignant") and common variants, case- and separator-insensitively.

    Raises:
        ConfigError: The name matches no finding.
    """
    try:
        return _alias_table()[_key(name)]
    except KeyError:
        raise ConfigError(f"unknown finding {name!r}; known: {finding_names()}") from None


def _split_findings(
    findings: Mapping[str, bool | int | None] | tuple[Iterable[str], Iterable[str]],
) -> tuple[list[str], list[str]]:
    """Turn either input form into canonical (positives, negatives), order kept, no duplicates."""
    if isinstance(findings, Mapping):
        states = {k: _state(v) for k, v in findings.items()}
        pos = [k for k, v in states.items() if v is True]
        neg = [k for k, v in states.items() if v is False]
    else:
        pos, neg = (list(x) for x in findings)
    if any(_key(p) == "no finding" for p in pos):
        # As the original: a "No Finding" label clears the negatives (docs/original.md §2.3).
        neg = []
    pos_c = list(dict.fromkeys(canonical_finding(p) for p in pos if _key(p) != "no finding"))
    neg_c = [n for n in dict.fromkeys(canonical_finding(n) for n in neg if _key(n) != "no finding") if n not in pos_c]
    return pos_c, neg_c


def _state(value: object) -> bool | None:
    """True/False for a known label, None for an unknown one (None, NaN, pandas.NA)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or type(value).__name__ == "NAType":
        return None
    return bool(value)


# --- Label -> text --------------------------------------------------------------------------------


def finding_sentence(
    finding: str, positive: bool, laterality: str | None, rng: np.random.Generator | None = None
) -> str:
    """One sentence stating that ``finding`` is present (or absent) in one breast.

    Args:
        finding: Any name :func:`canonical_finding` accepts.
        positive: Whether the finding is present.
        laterality: ``"L"``, ``"R"`` or ``None`` (side not stated).
        rng: Random source for the template and slot choice; ``None`` takes the first of each.
    """
    data = _load("findings.json")
    spec = data["findings"][canonical_finding(finding)]
    slots = {**data["slots"], **{k: v for k, v in spec.items() if k not in ("aliases", "positive", "negative")}}
    slots["side"] = _SIDE_WORDS[_laterality(laterality)]
    return _fill(_pick(spec["positive" if positive else "negative"], rng), slots, rng)


def density_sentence(density: str, laterality: str | None = None, rng: np.random.Generator | None = None) -> str:
    """A sentence describing ACR density ``density`` (A-D)."""
    code = str(density).strip().upper()
    if code not in DENSITIES:
        raise ConfigError(f"density must be one of {DENSITIES}, got {density!r}")
    side = _laterality(laterality)
    slots = {"side": _SIDE_WORDS[side], "breasts": _BREASTS_WORDS[side]}
    sentence = _fill(_pick(_load("density.json")[code], rng), slots, rng)
    # "the right breast are ..." -> "is" for a single breast.
    return sentence.replace("breast are", "breast is").replace("breast have", "breast has")


def birads_sentence(birads: int | str, rng: np.random.Generator | None = None) -> str:
    """A sentence stating BI-RADS assessment category ``birads`` (0-6; "4A" etc. map to 4)."""
    match = re.fullmatch(r"\s*([0-6])\s*[abcABC]?\s*", str(birads))
    if match is None or int(match.group(1)) not in BIRADS_CATEGORIES:
        raise ConfigError(f"birads must be one of {BIRADS_CATEGORIES}, got {birads!r}")
    return _fill(_pick(_load("birads.json")[match.group(1)], rng), {}, rng)


def labels_to_text(
    findings: Mapping[str, bool | int | None] | tuple[Iterable[str], Iterable[str]],
    laterality: str | None,
    rng: np.random.Generator | None = None,
    *,
    density: str | None = None,
    birads: int | str | None = None,
    deterministic: bool = False,
    include_negatives: bool = True,
) -> str:
    """Write a short report for one breast from its labels.

    Each positive finding gives one sentence and, with ``include_negatives``, each negative finding
    one more; density and BI-RADS sentences are added when given. In training mode the template and
    slot values are drawn from ``rng`` and the sentences shuffled; ``deterministic=True`` takes the
    first template of each and keeps the order density, positives, negatives, BI-RADS (use it for
    validation text). With no positive finding and no negatives a "no finding" sentence is written.
    Sentences end with a period; apply :func:`mammoclip.text.reports.normalize_text` with
    ``style="paper"`` for the original's period-free form.

    Args:
        findings: Either a mapping ``{finding: present}`` (``None``/NaN = unknown, skipped) whose
            keys are VinDr names or manifest columns (``mass``, ``calcification``, ``distortion``,
            ``asymmetry``, ``malignant``), or a pair ``(positives, negatives)`` of name lists as in
            the original's 4-slot lists. A positive ``"No Finding"`` drops the negatives and writes
            the "no finding" sentence, as the original does.
        laterality: ``"L"``, ``"R"`` or ``None`` (side not stated).
        rng: Random source; required unless ``deterministic``.
        density: ACR density A-D, or ``None``.
        birads: BI-RADS category 0-6, or ``None``.
        deterministic: Stable text: first templates, fixed order.
        include_negatives: Add a sentence for every finding known to be absent.

    Returns:
        The report text, e.g. ``"there is a spiculated mass in the upper outer quadrant of the
        left breast. there are no suspicious calcifications in the left breast."``.

    Raises:
        ConfigError: Unknown finding, density, BI-RADS or laterality, or no ``rng`` in random mode.

    Example:
        >>> labels_to_text({"mass": True, "calcification": False}, "L", deterministic=True)
        'there is a mass in the left breast. there are no suspicious calcifications in the left breast.'
    """
    if not deterministic and rng is None:
        raise ConfigError("labels_to_text needs an rng (numpy.random.Generator) unless deterministic=True")
    draw = None if deterministic else rng
    positives, negatives = _split_findings(findings)
    sentences = [finding_sentence(f, True, laterality, draw) for f in positives]
    if include_negatives:
        sentences += [finding_sentence(f, False, laterality, draw) for f in negatives]
    if not positives and not (include_negatives and negatives):
        slots = {**_load("findings.json")["slots"], "side": _SIDE_WORDS[_laterality(laterality)]}
        sentences.append(_fill(_pick(_load("findings.json")["no_finding"]["positive"], draw), slots, draw))
    if density is not None:
        sentences.insert(0, density_sentence(density, laterality, draw))
    if birads is not None:
        sentences.append(birads_sentence(birads, draw))
    sentences = list(dict.fromkeys(sentences))
    if draw is not None:
        sentences = [sentences[i] for i in draw.permutation(len(sentences))]
    return " ".join(s.rstrip(".") + "." for s in sentences)


def vindr_findings_to_text(
    finding_categories: Iterable[str] | str,
    laterality: str | None,
    rng: np.random.Generator | None = None,
    *,
    density: str | None = None,
    birads: int | str | None = None,
    deterministic: bool = False,
) -> str:
    """Report text for one VinDr breast from its ``finding_categories``.

    The negatives are the ten VinDr findings minus the positives, built from real lists (the
    original's notebook compared against the characters of a stringified list, docs/original.md §2.3).

    Args:
        finding_categories: The image's or breast's categories, as a list or as VinDr's stringified
            list (``"['Mass', 'Suspicious Calcification']"``); ``"No Finding"`` means none.
        laterality: ``"L"`` or ``"R"``.
        rng: Random source; required unless ``deterministic``.
        density: VinDr ``breast_density`` ("DENSITY C" or "C"), or ``None``.
        birads: VinDr ``breast_birads`` ("BI-RADS 4" or 4), or ``None``.
        deterministic: Stable text (see :func:`labels_to_text`).
    """
    from mammoclip.constants import VINDR_FINDINGS

    if isinstance(finding_categories, str):
        finding_categories = re.findall(r"[A-Za-z][A-Za-z ]*[A-Za-z]", finding_categories)
    positives = {canonical_finding(c) for c in finding_categories if _key(c) != "no finding"}
    findings = {name: name in positives for name in VINDR_FINDINGS}
    findings.update({p: True for p in positives})
    if density is not None:
        density = str(density).strip().upper().replace("DENSITY", "").strip()
    if birads is not None:
        birads = re.sub(r"(?i)bi-?rads", "", str(birads)).strip()
    return labels_to_text(findings, laterality, rng, density=density, birads=birads, deterministic=deterministic)


def _cbis_phrase(table: Mapping[str, str], code: str | None) -> str:
    if code is None or (isinstance(code, float) and np.isnan(code)) or not str(code).strip():
        return ""
    parts = [table.get(p.strip().upper(), p.strip().lower().replace("_", " ")) for p in str(code).split("-")]
    return " or ".join(p for p in parts if p)


def cbis_to_text(
    abnormality: str,
    laterality: str | None,
    rng: np.random.Generator | None = None,
    *,
    shape: str | None = None,
    margin: str | None = None,
    calc_type: str | None = None,
    distribution: str | None = None,
    pathology: str | None = None,
) -> str:
    """A sentence (two with ``pathology``) for one CBIS-DDSM abnormality.

    Args:
        abnormality: ``"mass"`` or ``"calcification"`` (CBIS-DDSM ``abnormality type``).
        laterality: ``"L"``, ``"R"`` or ``None``; CBIS-DDSM's ``LEFT``/``RIGHT`` also work.
        rng: Random template choice; ``None`` takes the first.
        shape, margin: Mass attributes (CBIS-DDSM codes such as ``IRREGULAR``, ``SPICULATED``).
        calc_type, distribution: Calcification attributes (``PLEOMORPHIC``, ``CLUSTERED``).
        pathology: ``MALIGNANT``, ``BENIGN`` or ``BENIGN_WITHOUT_CALLBACK``.
    """
    data = _load("cbis_ddsm.json")
    kind = "calcification" if _key(abnormality).startswith("calc") else _key(abnormality)
    if kind not in ("mass", "calcification"):
        raise ConfigError(f"CBIS-DDSM abnormality must be 'mass' or 'calcification', got {abnormality!r}")
    slots = {
        "side": _SIDE_WORDS[_laterality(laterality)],
        "shape": _cbis_phrase(data["shape"], shape),
        "margin": _cbis_phrase(data["margin"], margin),
        "calc_type": _cbis_phrase(data["calc_type"], calc_type),
        "distribution": _cbis_phrase(data["distribution"], distribution),
    }
    # The templates that state the most known attributes, and nothing unknown.
    attrs = {t: set(_SLOT.findall(t)) - {"side"} for t in data["templates"][kind]}
    usable = [t for t, names in attrs.items() if all(slots[n] for n in names)]
    most = max(len(attrs[t]) for t in usable)
    usable = [t for t in usable if len(attrs[t]) == most]
    sentences = [_fill(_pick(usable, rng), slots, rng)]
    if pathology is not None and str(pathology).strip().upper() in data["templates"]["pathology"]:
        sentences.append(_pick(data["templates"]["pathology"][str(pathology).strip().upper()], rng))
    return " ".join(s + "." for s in sentences)


def rsna_to_text(cancer: bool, laterality: str | None, rng: np.random.Generator | None = None) -> str:
    """A sentence for an RSNA screening breast: malignant or not."""
    return finding_sentence("Malignancy", bool(cancer), laterality, rng) + "."


# --- Zero-shot prompts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotTask:
    """A zero-shot classification task and the manifest column it is scored against.

    Attributes:
        name: Canonical task name (``mass``, ``calcification``, ``density`` ...).
        label_column: The manifest column holding the ground truth.
        classes: Class names in label index order.
        values: The label value of each class (0/1, ``"A"``-``"D"``, 0-6).
    """

    name: str
    label_column: str
    classes: tuple[str, ...]
    values: tuple[Any, ...]


@cache
def _task_aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, spec in _load("zero_shot.json")["tasks"].items():
        for alias in (name, *spec.get("aliases", ())):
            table[_key(alias)] = name
    return table


def list_zero_shot_tasks() -> list[str]:
    """Names of the built-in zero-shot tasks."""
    return list(_load("zero_shot.json")["tasks"])


def _resolve_task(task: str) -> str:
    try:
        return _task_aliases()[_key(task)]
    except KeyError:
        raise ConfigError(f"unknown zero-shot task {task!r}; known: {list_zero_shot_tasks()}") from None


def zero_shot_task(task: str) -> ZeroShotTask:
    """Metadata of a built-in task: label column, class names and label values in index order."""
    name = _resolve_task(task)
    spec = _load("zero_shot.json")["tasks"][name]
    return ZeroShotTask(name, spec["label_column"], tuple(spec["classes"]), tuple(spec["values"]))


def zero_shot_prompts(task: str, style: str = "paper") -> dict[str, list[str]]:
    """Prompts of one zero-shot task, one list per class, in label index order.

    Args:
        task: A name from :func:`list_zero_shot_tasks` or an alias (``suspicious_calcification``,
            ``malignant``, ``architectural_distortion``, ``bi-rads``).
        style: ``"paper"`` -- one short prompt per class as in the original (docs/original.md §6.1);
            ``"ensemble"`` -- several phrasings per class, to be averaged after encoding.

    Returns:
        ``{class_name: [prompt, ...]}``; binary tasks put the negative class first (index 0).

    Raises:
        ConfigError: Unknown task or style.

    Example:
        >>> zero_shot_prompts("mass")
        {'no_mass': ['no mass'], 'mass': ['mass']}
    """
    if style not in PROMPT_STYLES:
        raise ConfigError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    spec = _load("zero_shot.json")["tasks"][_resolve_task(task)]
    return {cls: list(prompts) for cls, prompts in zip(spec["classes"], spec[style])}



def read_json_object(path: Path, what: str, layout: str) -> dict[str, Any]:
    """A user's JSON file that must hold a non-empty object (prompt sets, attribute sentences).

    Args:
        path: The file.
        what: What the file is, for messages (``"prompt file"``).
        layout: The expected layout, shown when the file holds something else.

    Raises:
        DataError: missing file, not JSON (or not UTF-8), or not a non-empty object; the message names the file.
    """
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid JSON file ({err})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a JSON object {layout}")
    return data

def load_prompt_file(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Read and validate a user's zero-shot prompt file.

    Two layouts are accepted, with classes in label index order (negative first for binary
    tasks):

    * several tasks: ``{task: {class_name: [prompt, ...], ...}, ...}``;
    * one task: ``{class_name: [prompt, ...], ...}`` (read as the task ``task``).

    A task named like a built-in one (or an alias) must have the built-in number of classes.

    Args:
        path: The JSON file.
        task: Return only this task's ``{class_name: [prompt, ...]}``; required for a one-task file
            to be checked against a built-in task.

    Returns:
        ``{task: {class_name: [prompts]}}``, or ``{class_name: [prompts]}`` when ``task`` is given.

    Raises:
        DataError: The file is missing, not JSON, breaks the format, or lacks ``task``; the message
            names the file and the offending key.
    """
    path = Path(path)
    data = read_json_object(path, "prompt file", "{task: {class: [prompts]}} or {class: [prompts]}")
    if all(isinstance(v, list) for v in data.values()):
        data = {task or "custom": data}
    builtin = _task_aliases()
    for name, classes in data.items():
        if not isinstance(classes, dict) or len(classes) < 2:
            raise DataError(f"{path}: task {name!r} must map at least two class names to prompt lists")
        for cls, prompts in classes.items():
            if (
                not isinstance(prompts, list)
                or not prompts
                or not all(isinstance(p, str) and p.strip() for p in prompts)
            ):
                raise DataError(f"{path}: task {name!r} class {cls!r} needs a non-empty list of non-empty strings")
        if _key(name) in builtin:
            expected = len(_load("zero_shot.json")["tasks"][builtin[_key(name)]]["classes"])
            if len(classes) != expected:
                raise DataError(f"{path}: task {name!r} has {len(classes)} classes, the built-in task has {expected}")
    tables = {name: {cls: list(p) for cls, p in classes.items()} for name, classes in data.items()}
    if task is None:
        return tables
    by_key = {_key(name): name for name in tables}
    for candidate in (_key(task), *(k for k, v in builtin.items() if v == builtin.get(_key(task)))):
        if candidate in by_key:
            return tables[by_key[candidate]]
    raise DataError(f"{path}: no prompts for task {task!r}; the file has {sorted(tables)}")
