"""Token-length statistics and truncation warnings for a text encoder's tokenizer.

The paper truncates every caption at 256 tokens (docs/original.md §2.4); text past that is silently
lost. These helpers measure a corpus with the tokenizer actually used (any Hugging Face tokenizer
folder, loaded offline) and name the texts that will be cut.

Layer 1: imports ``transformers`` when a tokenizer is loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammoclip.constants import TEXT_MAX_LENGTH
from mammoclip.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class LengthStats:
    """Token lengths of a set of texts (special tokens included, before truncation)."""

    n: int
    mean: float
    median: float
    p95: float
    max: int
    max_length: int  # the encoder's limit the counts below refer to
    n_truncated: int  # texts longer than max_length
    frac_truncated: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def load_tokenizer(path: str | Path) -> Any:
    """Load a Hugging Face tokenizer from a local folder, never from the network.

    Raises:
        ConfigError: The folder is missing or holds no tokenizer.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"tokenizer folder {path} does not exist")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a tokenizer from {path} ({err})") from None


def token_lengths(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Number of tokens of each text, special tokens included, without truncation.

    Args:
        texts: The texts.
        tokenizer: A tokenizer object or a local tokenizer folder.

    Returns:
        ``(N,)`` int array.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if not texts:
        return np.zeros(0, dtype=np.int64)
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    return np.array([len(ids) for ids in encoded], dtype=np.int64)


def length_stats(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int = TEXT_MAX_LENGTH,
    ids: Sequence[str] | None = None,
) -> tuple[LengthStats, list[str]]:
    """Summarise token lengths and warn about every text the encoder will truncate.

    Args:
        texts: The texts as they will be fed to the encoder.
        tokenizer: A tokenizer object or a local tokenizer folder.
        max_length: The encoder's limit (256 in the paper).
        ids: A name per text for the warnings (report ids); defaults to the index.

    Returns:
        The statistics and one warning per truncated text (also logged).
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if ids is not None and len(ids) != len(texts):
        raise ConfigError(f"{len(ids)} ids for {len(texts)} texts")
    lengths = token_lengths(texts, tokenizer)
    names = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    warnings = [
        f"report {name}: {n} tokens > max_length {max_length}; the last {n - max_length} tokens will be truncated"
        for name, n in zip(names, lengths.tolist())
        if n > max_length
    ]
    for message in warnings:
        log.warning(message)
    n = len(lengths)
    stats = LengthStats(
        n=n,
        mean=float(lengths.mean()) if n else 0.0,
        median=float(np.median(lengths)) if n else 0.0,
        p95=float(np.percentile(lengths, 95)) if n else 0.0,
        max=int(lengths.max()) if n else 0,
        max_length=max_length,
        n_truncated=len(warnings),
        frac_truncated=len(warnings) / n if n else 0.0,
    )
    return stats, warnings


#: Sections whose token lengths are summarised: the two captions the paper trains on (docs/original.md §2.1).
CAPTION_SECTIONS: tuple[str, ...] = ("findings", "impression")


def _report_text(row: Any) -> str:
    """The full report of a ``reports.csv`` row, or its section columns written back with headers."""
    text = str(row.get("text", "") or "")
    if text.strip():
        return text
    parts = [f"{name.upper()}: {row.get(name)}" for name in ("history", "findings", "impression")
             if str(row.get(name, "") or "").strip()]
    return "\n".join(parts)


def _distribution(values: list[Any], categories: Sequence[Any]) -> dict[str, int]:
    out = {str(c): sum(1 for v in values if v == c) for c in categories}
    out["missing"] = sum(1 for v in values if v is None)
    return out


def corpus_summary(
    reports: Any,
    images: Any = None,
    *,
    tokenizer: Any = None,
    max_length: int = TEXT_MAX_LENGTH,
) -> dict[str, Any]:
    """Summarise a report corpus: section coverage, lengths, BI-RADS and density distributions.

    Args:
        reports: The ``reports.csv`` table (:data:`mammoclip.data.manifest.REPORT_COLUMNS`).
        images: The manifest; when it has ``report_id`` with ``birads``/``density`` labels, the
            agreement of the parsed fields with those labels is reported too.
        tokenizer: A tokenizer object or folder; adds token-length statistics of the caption
            sections and truncation warnings.
        max_length: The text encoder's limit.

    Returns:
        A JSON-ready dict; ``warnings`` lists every problem met, each naming its report.
    """
    from mammoclip.constants import BIRADS_CATEGORIES, DENSITIES
    from mammoclip.text.reports import BIRADS_SEVERITY, SECTIONS, parse_reports

    rows = reports.to_dict("records") if hasattr(reports, "to_dict") else list(reports)
    parsed, warnings = parse_reports((str(r["report_id"]), _report_text(r)) for r in rows)
    n = len(parsed)
    chars = np.array([sum(len(v) for v in p.sections.values()) for p in parsed] or [0])
    summary: dict[str, Any] = {
        "n_reports": len(rows),
        "n_parsed": n,
        "section_coverage": {s: (sum(s in p.sections for p in parsed) / n if n else 0.0) for s in SECTIONS},
        "chars": {"mean": float(chars.mean()), "median": float(np.median(chars)), "max": int(chars.max())},
        "sentences_per_report": float(np.mean([len(p.sentences) for p in parsed])) if n else 0.0,
        "birads": _distribution([p.birads for p in parsed], BIRADS_CATEGORIES),
        "density": _distribution([p.density for p in parsed], DENSITIES),
    }
    if images is not None and "report_id" in getattr(images, "columns", ()):
        by_id = {p.report_id: p for p in parsed}
        agreement: dict[str, Any] = {}
        # A report states the study's overall BI-RADS (the most worrisome breast's) and one density.
        study_label = {
            "birads": lambda s: max((int(v) for v in s), key=BIRADS_SEVERITY.index),
            "density": lambda s: s.mode().iloc[0],
        }
        for column, aggregate in study_label.items():
            if column not in images.columns:
                continue
            labels = images.dropna(subset=["report_id", column]).groupby("report_id")[column].agg(aggregate)
            pairs = [(getattr(by_id[str(rid)], column), lab) for rid, lab in labels.items() if str(rid) in by_id]
            matches = sum(1 for got, want in pairs if got is not None and str(got) == str(want).split(".")[0])
            agreement[column] = {"n": len(pairs), "agreement": matches / len(pairs) if pairs else None}
        summary["label_agreement"] = agreement
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        tokens: dict[str, Any] = {}
        for section in CAPTION_SECTIONS:
            have = [p for p in parsed if p.sections.get(section)]
            stats, section_warnings = length_stats([p.sections[section] for p in have], tokenizer,
                                                   max_length=max_length, ids=[f"{p.report_id} ({section})" for p in have])
            tokens[section] = stats.to_dict()
            warnings.extend(section_warnings)
        summary["tokens"] = tokens
    summary["warnings"] = warnings
    return summary


#: Report files a plain folder is read for (recursively).
REPORT_FILE_PATTERN: str = "*.txt"


def read_report_folder(
    folder: str | Path, pattern: str = REPORT_FILE_PATTERN
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Read every report file under ``folder`` (recursively) as ``reports.csv``-like rows.

    A report id is the file's path under ``folder`` without its suffix (``2024/R001``), so files of
    the same name in different subfolders stay apart. Files that are not UTF-8 are read with the
    fallback codecs of :func:`mammoclip.text.reports.decode_bytes` (cp1252, then latin-1) rather than
    stopping the run.

    Returns:
        The rows (``report_id``, ``text``) in path order, and ``{report_id: codec}`` for every file that
        was not UTF-8.

    Raises:
        DataError: ``folder`` is not a folder, or holds no file matching ``pattern``.
    """
    from mammoclip.text.reports import REPORT_ENCODINGS, decode_bytes

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of report files")
    files = sorted(p for p in folder.rglob(pattern) if p.is_file())
    if not files:
        raise DataError(f"{folder}: no report files matching {pattern} (searched recursively)")
    rows: list[dict[str, str]] = []
    fallback: dict[str, str] = {}
    for path in files:
        report_id = path.relative_to(folder).with_suffix("").as_posix()
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
        text, codec = decode_bytes(data)
        if codec != REPORT_ENCODINGS[0]:
            fallback[report_id] = codec
        rows.append({"report_id": report_id, "text": text})
    return rows, fallback


def folder_summary(
    folder: str | Path,
    *,
    pattern: str = REPORT_FILE_PATTERN,
    tokenizer: Any = None,
    max_length: int = TEXT_MAX_LENGTH,
) -> dict[str, Any]:
    """:func:`corpus_summary` of a plain folder of report files, no manifest needed.

    Adds ``non_utf8`` (``{report_id: codec}`` of the files read with a fallback codec) and one warning
    per such file; there is no ``label_agreement`` (no labels without a manifest).
    """
    rows, fallback = read_report_folder(folder, pattern)
    summary = corpus_summary(rows, tokenizer=tokenizer, max_length=max_length)
    summary["non_utf8"] = fallback
    decoded = [f"report {rid}: not valid UTF-8; read as {codec}" for rid, codec in fallback.items()]
    summary["warnings"] = decoded + summary["warnings"]
    return summary
