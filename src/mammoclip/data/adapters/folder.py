"""A plain DICOM folder: ``<root>/<patient>/<study>/*.dcm`` with one ``report.txt`` per study.

The shape of a typical hospital export (docs/original.md §8). Laterality and view come from the DICOM
header (:func:`mammoclip.imaging.dicom.read_dicom_header`, which also reads free-text fields);
the report's raw text goes to ``reports.csv`` (``text``), with findings/impression/history filled by
:func:`mammoclip.text.reports.parse_report`. Splits are assigned
per patient by hash (:func:`mammoclip.data.manifest.assign_patient_splits`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mammoclip.data.adapters import register_adapter
from mammoclip.data.manifest import REPORT_COLUMNS, Bundle, assign_patient_splits, empty_reports
from mammoclip.errors import DataError
from mammoclip.imaging.dicom import read_dicom_header

log = logging.getLogger(__name__)

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
REPORT_FILE = "report.txt"


def _report_sections(text: str, report_id: str) -> dict[str, str]:
    """Findings/impression/history of a report (de-identified by the parser); raw text stays in ``text``."""
    from mammoclip.text.reports import parse_report

    parsed = parse_report(text, report_id)
    return {name: parsed.sections.get(name, "") for name in ("findings", "impression", "history")}


@register_adapter("folder", "plain folder <root>/<patient>/<study>/*.dcm + report.txt")
class FolderAdapter:
    @staticmethod
    def detect(source: Path) -> bool:
        return source.is_dir() and any(p.suffix.lower() in DICOM_SUFFIXES for p in source.glob("*/*/*"))

    @staticmethod
    def load(source: Path, *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
             ) -> Bundle:
        """Read every DICOM header under ``source``; unreadable files are skipped, logged and listed.

        Skipped files (not DICOM, truncated, not MG, no laterality/view) are listed as ``(file,
        reason)`` in ``bundle.images.attrs["skipped"]``; :func:`mammoclip.data.preprocess.preprocess`
        writes them to ``failures.csv`` and ``manifest build`` prints them.

        Raises:
            DataError: no DICOM files in the expected layout.
        """
        files = sorted(p for p in source.glob("*/*/*") if p.suffix.lower() in DICOM_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no DICOM files found as <patient>/<study>/*.dcm")
        rows: list[dict[str, Any]] = []
        reports: list[dict[str, str]] = []
        skipped: list[tuple[str, str]] = []
        for path in files:
            patient, study = path.parent.parent.name, path.parent.name
            try:
                meta = read_dicom_header(path)
            except DataError as err:
                skipped.append((str(path), str(err)))
                log.warning("skipped: %s", err)
                continue
            if meta.laterality is None or meta.view is None:
                skipped.append((str(path), f"{path}: laterality/view not found in the header"))
                log.warning("skipped: %s: laterality/view not found in the header", path)
                continue
            report_id = f"{patient}/{study}"
            has_report = (path.parent / REPORT_FILE).exists()
            rows.append({"image_id": f"{patient}_{study}_{path.stem}", "patient_id": patient,
                         "study_id": study, "laterality": meta.laterality, "view": meta.view,
                         "path": str(path.relative_to(source)), "source": "folder",
                         "report_id": report_id if has_report else pd.NA})
        for study_dir in sorted({p.parent for p in files}):
            report = study_dir / REPORT_FILE
            if report.exists():
                text = report.read_text(encoding="utf-8", errors="replace")
                report_id = f"{study_dir.parent.name}/{study_dir.name}"
                entry = {"report_id": report_id, **_report_sections(text, report_id), "text": text}
                reports.append(entry)
        if not rows:
            raise DataError(f"{source}: no usable DICOM files ({len(skipped)} skipped; first: {skipped[0][1]})")
        images = pd.DataFrame(rows)
        splits = assign_patient_splits(images["patient_id"], fractions, seed)
        images.insert(6, "split", images["patient_id"].map(splits))
        images.attrs["skipped"] = skipped
        reps = pd.DataFrame(reports, columns=list(REPORT_COLUMNS)) if reports else empty_reports()
        return Bundle(images=images, reports=reps, root=source)
