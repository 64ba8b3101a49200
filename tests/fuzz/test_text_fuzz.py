"""Short fuzz run of the report parser and the manifest reader: hypothesis (derandomized) plus seeded mutants.

The parser promises never to raise on content (``parse_report``); the manifest reader may refuse a
file, but only with the project's own error (``mammoclip.errors``), never a raw ``KeyError`` or
``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mammoclip.constants import DENSITIES
from mammoclip.data.manifest import Problem, load_bundle, read_manifest, validate_manifest
from mammoclip.errors import MammoclipError
from mammoclip.text.reports import SIDES, ParsedReport, parse_report
from tests.fuzz.mutator import GOOD_MANIFEST, REPORT_PIECES, manifest_csv, report_text

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.disable(logging.WARNING)  # every hostile report logs warnings by design
    yield
    logging.disable(logging.NOTSET)


def check_parsed(report: ParsedReport) -> None:
    """Types and ranges of every field, and a JSON-ready ``to_dict``."""
    assert isinstance(report, ParsedReport)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in report.sections.items())
    assert isinstance(report.preamble, str)
    assert all(s.side in SIDES for s in report.sentences)
    assert all(m.side in SIDES and isinstance(m.finding, str) for m in report.mentions)
    assert all(isinstance(s.text, str) and s.section in report.sections for s in report.sentences)
    assert report.birads is None or report.birads in range(7)
    assert report.birads_subcategory in (None, "4A", "4B", "4C")
    assert all(side in ("L", "R") and v in range(7) for side, v in report.birads_by_side.items())
    assert report.density is None or report.density in DENSITIES
    assert report.rcr is None or report.rcr in range(1, 6)
    assert all(0 <= m.sentence < len(report.sentences) for m in report.mentions)
    assert all(isinstance(w, str) for w in report.warnings)
    json.dumps(report.to_dict())


def _parse(text: str | bytes) -> None:
    try:
        report = parse_report(text, "fuzz")
    except MammoclipError:
        return
    check_parsed(report)


@pytest.mark.slow
@FUZZ
@given(st.one_of(st.text(), st.binary(), st.lists(st.sampled_from(REPORT_PIECES)).map("".join)))
def test_report_parser_hypothesis(text: str | bytes) -> None:
    _parse(text)


@pytest.mark.parametrize("chunk", range(4))
def test_report_parser_seeded_mutants(chunk: int) -> None:
    """100 hostile reports (headers only, a 300 kB line, 5000 nested brackets, raw bytes, any code point)."""
    for i in range(chunk * 25, chunk * 25 + 25):
        _parse(report_text(np.random.default_rng([0, i])))


def _read(path: Path) -> None:
    """Every reader either returns a table or raises the project's own error."""
    for fn in (read_manifest, load_bundle):
        try:
            fn(path)
        except MammoclipError as err:
            assert str(err)
    try:
        frame = pd.read_csv(path, dtype=str)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return  # pandas refused it: read_manifest turns that into DataError, checked above
    problems = validate_manifest(frame)
    assert all(isinstance(p, Problem) and str(p) for p in problems)


def test_good_manifest_reads(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(GOOD_MANIFEST)
    assert len(read_manifest(tmp_path / "manifest.csv")) == 3


@pytest.mark.parametrize("chunk", range(4))
def test_manifest_reader_seeded_mutants(tmp_path: Path, chunk: int) -> None:
    """100 mutated manifests: dropped/renamed columns, wrong types, NaN ids, non-UTF-8 bytes, ragged rows."""
    for i in range(chunk * 25, chunk * 25 + 25):
        data, detail = manifest_csv(np.random.default_rng([0, i]))
        path = tmp_path / "manifest.csv"
        path.write_bytes(data)
        try:
            _read(path)
        except AssertionError:
            raise
        except Exception as err:  # noqa: BLE001 - the fuzz finding, named with its mutation
            raise AssertionError(f"manifest mutant {i} ({detail}): {type(err).__name__}: {err}") from err


@FUZZ
@given(st.binary(max_size=600))
def test_manifest_reader_hypothesis_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(GOOD_MANIFEST.encode()[:40] + data)
    _read(path)
