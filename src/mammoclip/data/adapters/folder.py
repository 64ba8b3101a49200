"""A folder of DICOM files in any layout, grouped by their headers; reports and labels when present.

Two ways to group images into patients and studies (option ``group_by``, docs/data.md §2):

* ``folders``: the classic hospital export ``<root>/<patient>/<study>/*.dcm`` (docs/original.md §8):
  patient and study are the folder names, ``image_id = <patient>_<study>_<stem>``, one ``report.txt``
  per study folder (``report_id = <patient>/<study>``).
* ``tags``: any other layout (one flat folder of opaque names, any nesting): patient, study and
  series come from the DICOM header (``PatientID``, ``StudyInstanceUID``, ``SeriesInstanceUID``),
  ``image_id`` is the relative path without its DICOM suffix, and a study's report is the
  ``report.txt`` of a folder holding only that study, else a ``<StudyInstanceUID>.txt`` or
  ``<AccessionNumber>.txt`` anywhere in the tree (``report_id = study_id``).

``auto`` (the default) takes ``folders`` when every DICOM file sits exactly two folders deep with a
``.dcm``/``.dicom`` suffix, ``tags`` otherwise. In both, laterality and view come from the header
(:func:`mammoclip.imaging.dicom.read_dicom_header`; pixel data is never read), a file is a DICOM when
its name ends in ``.dcm``/``.dicom`` or its bytes 128-131 are ``DICM``, ids that would collide get a
hash suffix (:func:`~mammoclip.data.adapters._common.unique_ids`), and splits are assigned per patient
by hash (:func:`mammoclip.data.manifest.assign_patient_splits`). Image-level labels can be joined from a
CSV (:func:`join_labels`), so that a user's own labelled folder goes straight to evaluation.

A file that cannot be used (special file, unreadable or hostile header, not MG, no laterality/view)
never stops the build: it is listed as ``(file, one-line reason)`` in ``bundle.images.attrs["skipped"]``,
which ``Bundle.save`` writes to ``left_out.csv`` and :func:`mammoclip.data.preprocess.preprocess`
carries into ``failures.csv``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.adapters._common import LABEL_ALIASES, normalise_name, parse_labels, read_csv, unique_ids
from mammoclip.data.manifest import (
    REPORT_COLUMNS,
    SPLIT_BY_HASH,
    SPLIT_SOURCE_COLUMN,
    Bundle,
    assign_patient_splits,
    empty_reports,
)
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.dicom import DicomMeta, read_dicom_header
from mammoclip.imaging.failures import one_line

log = logging.getLogger(__name__)

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
REPORT_FILE = "report.txt"
#: Suffix of reports named after their study (``<StudyInstanceUID>.txt``, ``<AccessionNumber>.txt``).
REPORT_SUFFIX = ".txt"
GROUP_MODES: tuple[str, ...] = ("auto", "folders", "tags")
#: Names never read: the DICOMDIR index is not an image; hidden files (``.DS_Store``, macOS ``._x.dcm``
#: resource forks) and hidden folders are not part of an export.
_IGNORED_NAMES = frozenset({"DICOMDIR"})
#: At most this many files are opened by :meth:`FolderAdapter.detect` to look for the DICM preamble.
_DETECT_PROBES = 200
_MAX_REASON = 300

_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _has_preamble(path: Path) -> bool:
    """Whether a regular file carries the DICOM Part 10 marker (``DICM`` at byte 128)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass
class _Scan:
    """What a walk over the source found."""

    dicoms: list[Path]
    texts: list[Path]
    left_out: list[tuple[str, str]]


def _walk(source: Path) -> Iterator[Path]:
    """Every file under ``source`` in sorted order, hidden entries and DICOMDIR left aside.

    Symbolic links to folders are not followed (no cycles); links to files are kept.
    """
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name not in _IGNORED_NAMES:
                yield Path(dirpath) / name


def _kind(path: Path) -> tuple[str, str]:
    """``("dicom" | "text" | "other" | "left_out", reason)`` of one file, by type before any read.

    A FIFO or device named ``*.dcm`` would block or stream forever on ``open``: the file type is
    checked with ``os.stat`` first, and only regular files are ever opened.
    """
    named = path.suffix.lower() in DICOM_SUFFIXES
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return ("left_out", f"{path}: cannot stat ({one_line(err.strerror or str(err), _MAX_REASON)})") if named else ("other", "")
    if not stat.S_ISREG(mode):
        what = next((text for test, text in _FILE_TYPES if test(mode)), "not a regular file")
        return ("left_out", f"{path}: {what}, not a regular file; skipped") if named else ("other", "")
    if named or _has_preamble(path):
        return "dicom", ""
    return ("text", "") if path.suffix.lower() == REPORT_SUFFIX else ("other", "")


def _scan(source: Path) -> _Scan:
    found = _Scan([], [], [])
    for path in _walk(source):
        kind, reason = _kind(path)
        if kind == "dicom":
            found.dicoms.append(path)
        elif kind == "text":
            found.texts.append(path)
        elif kind == "left_out":
            found.left_out.append((str(path), reason))
    return found


def _read(path: Path, with_tags: bool) -> tuple[DicomMeta, dict[str, str]] | str:
    """The header of one file, or a one-line reason why it is left out.

    Anything a malformed header raises is caught (struct errors, ``ValueError``, ``KeyError``, decoder
    panics deriving from ``BaseException``), so one file never ends the build; only an interrupt or
    ``SystemExit`` goes through.
    """
    try:
        meta = read_dicom_header(path)
    except DataError as err:
        return one_line(str(err), _MAX_REASON)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - see the docstring
        return one_line(f"{path}: cannot read DICOM header ({type(err).__name__}: {err})", _MAX_REASON)
    if meta.laterality is None or meta.view is None:
        return f"{path}: laterality/view not found in the header"
    if not with_tags:
        return meta, {"series": "", "accession": ""}
    return meta, {"series": meta.series_id or "", "accession": meta.accession or ""}


def _report_sections(text: str, report_id: str) -> dict[str, str]:
    """Findings/impression/history of a report (de-identified by the parser); raw text stays in ``text``."""
    from mammoclip.text.reports import parse_report

    parsed = parse_report(text, report_id)
    return {name: parsed.sections.get(name, "") for name in ("findings", "impression", "history")}


def _report_entry(path: Path, report_id: str) -> dict[str, str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return {"report_id": report_id, **_report_sections(text, report_id), "text": text}


def _strip_suffix(rel: PurePosixPath) -> str:
    return rel.with_suffix("").as_posix() if rel.suffix.lower() in DICOM_SUFFIXES else rel.as_posix()


def _by_folders(source: Path, used: list[tuple[Path, DicomMeta, dict[str, str]]]
                ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows and reports for ``<root>/<patient>/<study>/*.dcm`` (patient and study = folder names)."""
    rows: list[dict[str, Any]] = []
    for path, meta, _extra in used:
        patient, study = path.parent.parent.name, path.parent.name
        has_report = (path.parent / REPORT_FILE).exists()
        rows.append({"image_id": f"{patient}_{study}_{path.stem}", "patient_id": patient, "study_id": study,
                     "laterality": meta.laterality, "view": meta.view,
                     "path": str(path.relative_to(source)), "source": "folder",
                     "report_id": f"{patient}/{study}" if has_report else pd.NA,
                     "_study": f"{patient}/{study}", "_sop": meta.image_id or ""})
    reports = []
    for study_dir in sorted({path.parent for path, _m, _e in used}):
        if (study_dir / REPORT_FILE).exists():
            reports.append(_report_entry(study_dir / REPORT_FILE, f"{study_dir.parent.name}/{study_dir.name}"))
    return rows, reports


def _by_tags(source: Path, used: list[tuple[Path, DicomMeta, dict[str, str]]], texts: list[Path]
             ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows and reports grouped by the header's patient/study/series UIDs (any layout)."""
    rows: list[dict[str, Any]] = []
    no_patient = 0
    for path, meta, extra in used:
        rel = PurePosixPath(path.relative_to(source).as_posix())
        folder = rel.parent.as_posix()
        study = meta.study_id or extra["accession"] or f"folder:{folder}"
        if not meta.patient_id:
            no_patient += 1
        rows.append({"image_id": _strip_suffix(rel), "patient_id": meta.patient_id or f"study:{study}",
                     "study_id": study, "laterality": meta.laterality, "view": meta.view,
                     "path": rel.as_posix(), "source": "folder", "report_id": pd.NA,
                     "series_id": extra["series"], "_study": study, "_sop": meta.image_id or "",
                     "_folder": folder, "_accession": extra["accession"]})
    if no_patient:
        log.warning("folder: %d image(s) have no PatientID; each of their studies counts as its own patient",
                    no_patient)
    # A report.txt speaks for its folder only when the folder holds one study; otherwise it is ambiguous.
    studies_in_folder: dict[str, set[str]] = {}
    for row in rows:
        studies_in_folder.setdefault(row["_folder"], set()).add(row["_study"])
    by_name: dict[str, Path] = {}
    for text in texts:  # sorted: the first file of a name wins
        by_name.setdefault(text.stem, text)
    reports: dict[str, dict[str, str]] = {}
    for row in rows:
        study = row["_study"]
        if study not in reports:
            local = source / row["_folder"] / REPORT_FILE
            candidates = [local] if len(studies_in_folder[row["_folder"]]) == 1 and local.is_file() else []
            candidates += [by_name[k] for k in (study, row["_accession"]) if k and k in by_name]
            if candidates:
                reports[study] = _report_entry(candidates[0], study)
        if study in reports:
            row["report_id"] = study
    return rows, list(reports.values())


#: Kinds of image key a labels CSV can use, in order of preference when several match equally.
KEY_KINDS: tuple[str, ...] = ("path", "name", "stem", "sop", "image_id")
_KEY_NAMES = {"path": "relative path", "name": "file name", "stem": "file name without suffix",
              "sop": "SOPInstanceUID", "image_id": "image id"}


def _image_keys(images: pd.DataFrame) -> dict[str, list[str]]:
    paths = [PurePosixPath(Path(p).as_posix()) for p in images["path"]]
    return {"path": [p.as_posix() for p in paths], "name": [p.name for p in paths],
            "stem": [_strip_suffix(PurePosixPath(p.name)) for p in paths],
            "sop": [str(s) for s in images.get("_sop", pd.Series("", index=images.index))],
            "image_id": [str(i) for i in images["image_id"]]}


def join_labels(images: pd.DataFrame, labels: str | Path, key: str | None = None) -> pd.DataFrame:
    """Join image-level labels from a CSV onto the folder adapter's images.

    The key column holds, per row, an image's relative path, file name (with or without its DICOM
    suffix), SOPInstanceUID or image id; which one is found by matching. ``key`` names the column; by
    default every non-label column is tried and the one matching most images wins (a tie between two
    columns is refused: name one). Label columns are those of :data:`LABEL_ALIASES` (validated by
    :func:`parse_labels`); other columns and unmatched keys are reported on one line each and ignored.

    Raises:
        DataError: unreadable CSV, no key column, no key matching any image, duplicated keys, a key
            naming several images, or a label value outside its vocabulary.
        ConfigError: ``key`` is not a column of the CSV, or the key column is ambiguous.
    """
    path = Path(labels)
    table = read_csv(path, [])
    if key is not None and key not in table.columns:
        raise ConfigError(f"{path}: --labels-key {key!r} is not a column (has {list(table.columns)})")
    label_cols = [c for c in table.columns if normalise_name(c) in LABEL_ALIASES and c != key]
    if not label_cols:
        raise DataError(f"{path}: no label column; known labels: {sorted(set(LABEL_ALIASES.values()))} "
                        f"(has {list(table.columns)})")
    candidates = [key] if key is not None else [c for c in table.columns if c not in label_cols]
    if not candidates:
        raise DataError(f"{path}: no key column besides the labels {label_cols}")
    image_keys = _image_keys(images)
    scores: list[tuple[int, int, str, str]] = []  # (matches, -kind rank, column, kind)
    for col in candidates:
        values = set(table[col].dropna().astype(str).str.strip())
        for rank, kind in enumerate(KEY_KINDS):
            scores.append((len(values & set(image_keys[kind])), -rank, col, kind))
    scores.sort(reverse=True)
    best, _, col, kind = scores[0]
    if best == 0:
        raise DataError(f"{path}: no value of {candidates} matches an image's relative path, file name, "
                        f"SOPInstanceUID or image id (e.g. {image_keys['path'][0]!r}); check --labels-key")
    rival = next((s for s in scores if s[2] != col and s[0] == best), None)
    if rival is not None:
        raise ConfigError(f"{path}: columns {col!r} and {rival[2]!r} both match {best} images; "
                          f"choose the key with --labels-key")
    keys = table[col].astype("string").str.strip()
    dup = keys[keys.notna() & keys.duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{path}: key {dup.iloc[0]!r} in column {col!r} appears {int((keys == dup.iloc[0]).sum())} "
                        f"times ({dup.nunique()} duplicated key(s)); one row per image")
    per_image = Counter(image_keys[kind])
    shared = [k for k in keys.dropna() if per_image[k] > 1]
    if shared:
        raise DataError(f"{path}: {_KEY_NAMES[kind]} {shared[0]!r} names {per_image[shared[0]]} images "
                        f"({len(shared)} such key(s)); key the labels by relative path")
    parsed = parse_labels(table[label_cols], str(path))
    parsed.index = keys.to_numpy()
    parsed = parsed[parsed.index.notna()]
    where = pd.Series(image_keys[kind], index=images.index)
    out = images.copy()
    for label in parsed.columns:
        out[label] = where.map(parsed[label]).astype(parsed[label].dtype)
    unknown = [c for c in table.columns if c != col and c not in label_cols]
    if unknown:
        log.warning("%s: %d column(s) are not manifest labels and are ignored: %s (labels: %s)",
                    path, len(unknown), unknown, sorted(set(LABEL_ALIASES.values())))
    unmatched = sorted(set(parsed.index) - set(image_keys[kind]))
    missing = int((~where.isin(set(parsed.index))).sum())
    if unmatched or missing:
        example = f" (e.g. {unmatched[:3]})" if unmatched else ""
        log.warning("%s: %d of %d label row(s) match no image%s; %d of %d image(s) have no label row",
                    path, len(unmatched), len(parsed), example, missing, len(images))
    log.info("%s: labels %s joined by %s (column %r)", path, list(parsed.columns), _KEY_NAMES[kind], col)
    return out


@register_adapter("folder", "DICOM folder in any layout (grouped by folders or DICOM tags) + reports, labels CSV")
class FolderAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        """A folder holding a ``.dcm``/``.dicom`` file anywhere, or one of its first files with ``DICM``."""
        if not source.is_dir():
            return False
        probes = 0
        for path in _walk(source):
            if path.suffix.lower() in DICOM_SUFFIXES:
                return True
            if probes < _DETECT_PROBES:
                probes += 1
                try:
                    if stat.S_ISREG(os.stat(path).st_mode) and _has_preamble(path):
                        return True
                except OSError:
                    continue
        return False

    @staticmethod
    def load(source: Path, *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0,
             group_by: str = "auto", labels: str | Path | None = None, labels_key: str | None = None) -> Bundle:
        """Read every DICOM header under ``source``; files that cannot be used are listed, never fatal.

        Args:
            group_by: ``auto`` | ``folders`` | ``tags`` (module docstring).
            labels: A CSV of image-level labels to join (:func:`join_labels`).
            labels_key: Its key column (detected when omitted).

        Raises:
            DataError: no DICOM file, or none usable (the first reason is named).
            ConfigError: unknown ``group_by``.
        """
        if group_by not in GROUP_MODES:
            raise ConfigError(f"group_by must be one of {list(GROUP_MODES)}, got {group_by!r}")
        found = _scan(source)
        if not found.dicoms and not found.left_out:
            raise DataError(f"{source}: no DICOM files found (by suffix .dcm/.dicom or the DICM preamble)")
        if group_by == "auto":
            flat = all(len(p.relative_to(source).parts) == 3 and p.suffix.lower() in DICOM_SUFFIXES
                       for p in found.dicoms)
            group_by = "folders" if found.dicoms and flat else "tags"
        skipped = list(found.left_out)
        used: list[tuple[Path, DicomMeta, dict[str, str]]] = []
        for path in found.dicoms:
            result = _read(path, with_tags=group_by == "tags")
            if isinstance(result, str):
                skipped.append((str(path), result))
                log.warning("skipped: %s", result)
            else:
                used.append((path, *result))
        if not used:
            first = skipped[0][1] if skipped else "none"
            raise DataError(f"{source}: no usable DICOM files ({len(skipped)} skipped; first: {first})")
        if group_by == "folders":
            rows, reports = _by_folders(source, used)
        else:
            rows, reports = _by_tags(source, used, found.texts)
        images = pd.DataFrame(rows)
        images["image_id"] = unique_ids(list(images["image_id"]), list(images["path"]))
        n_studies = images["_study"].nunique()
        no_report = images.loc[images["report_id"].isna(), "_study"].nunique()
        if no_report:
            log.warning("folder: %d of %d studies have no report (report.txt in the study folder, or "
                        "<StudyInstanceUID>.txt / <AccessionNumber>.txt); their images have no report_id",
                        no_report, n_studies)
        if labels is not None:
            images = join_labels(images, labels, labels_key)
        images = images.drop(columns=[c for c in images.columns if c.startswith("_")])
        splits = assign_patient_splits(images["patient_id"], fractions, seed)
        images.insert(6, "split", images["patient_id"].map(splits))
        images[SPLIT_SOURCE_COLUMN] = SPLIT_BY_HASH  # not the user's: zeroshot says so and offers --split all
        images.attrs["skipped"] = skipped
        reps = pd.DataFrame(reports, columns=list(REPORT_COLUMNS)) if reports else empty_reports()
        return Bundle(images=images, reports=reps, root=source)
