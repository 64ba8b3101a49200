"""The fuzzer's own guarantees: mutants are deterministic and really mutated, and the checker can fail."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fuzz.harness import BatchReport, check_batch, violations
from tests.fuzz.mutator import MUTATIONS, SPECIAL, generate, good_copy, make_seeds, mutate


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory):
    return make_seeds(tmp_path_factory.mktemp("seeds"), synthetic_patients=1)


def test_same_seed_gives_byte_identical_mutants(seeds, tmp_path: Path) -> None:
    a = generate(seeds, 2 * len(MUTATIONS), seed=5, root=tmp_path / "a")
    b = generate(seeds, 2 * len(MUTATIONS), seed=5, root=tmp_path / "b")
    c = generate(seeds, 2 * len(MUTATIONS), seed=6, root=tmp_path / "c")
    assert [(m.kind, m.detail, m.seed) for m in a] == [(m.kind, m.detail, m.seed) for m in b]
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b))
    assert sum(x.path.read_bytes() != z.path.read_bytes() for x, z in zip(a, c)) > len(a) // 2


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_every_mutation_changes_its_seed(seeds, tmp_path: Path, kind: str) -> None:
    by_name = {s.name: s for s in seeds}
    for index in range(3):
        m = mutate(seeds, kind, index, 0, tmp_path)
        assert m.kind == kind, m.describe()  # the mutation was written, not replaced by the fallback
        assert m.detail and "\n" not in m.detail
        assert m.path.read_bytes() != by_name[m.seed].path.read_bytes(), m.describe()


def test_huge_size_declares_it_in_header_and_codestream(seeds, tmp_path: Path) -> None:
    import pydicom
    from pydicom.encaps import generate_frames

    j2k = [s for s in seeds if s.syntax == "j2k"]
    m = mutate(j2k, "huge_size", 0, 0, tmp_path)
    ds = pydicom.dcmread(m.path)
    assert int(ds.Rows) * int(ds.Columns) >= 40000 * 30000
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    siz = stream.find(b"\xff\x51")
    assert struct.unpack(">II", stream[siz + 6:siz + 14]) == (int(ds.Columns), int(ds.Rows))
    assert m.path.stat().st_size < 100_000


def test_deflate_bomb_inflates_to_its_declared_size(seeds, tmp_path: Path) -> None:
    m = mutate(seeds, "deflate_bomb", 0, 0, tmp_path)
    data = m.path.read_bytes()
    assert b"1.2.840.10008.1.2.1.99" in data[:400]  # declared deflated
    start = 132 + 12 + struct.unpack("<I", data[140:144])[0]  # preamble, group length element, file meta
    inflater, total, rest = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[start:]
    while rest:  # streamed: the test never holds the 512 MiB
        total += len(inflater.decompress(rest, 1 << 24))
        rest = inflater.unconsumed_tail
    assert total >= 16384 * 16384 * 2
    assert len(data) < 4 << 20


def test_special_files_are_what_they_claim(tmp_path: Path) -> None:
    import stat

    made = {kind: mutate([], kind, i, 0, tmp_path) for i, kind in enumerate(SPECIAL)}
    assert stat.S_ISFIFO(made["fifo"].path.lstat().st_mode)
    assert made["directory"].path.is_dir()
    assert made["empty"].path.stat().st_size == 0
    assert made["dangling_link"].path.is_symlink() and not made["dangling_link"].path.exists()
    assert stat.S_ISCHR(made["devzero_link"].path.stat().st_mode)


def test_checker_reports_each_broken_invariant(seeds, tmp_path: Path) -> None:
    """A hand-made output folder that breaks every batch invariant once: each one is reported."""
    from mammoclip.imaging.imageio import write_png

    inputs = [good_copy(seeds[0], 0, tmp_path / "in"), *generate(seeds, 3, seed=0, root=tmp_path / "in")]
    good, flat, lost, twice = inputs
    out = tmp_path / "out"
    write_png(out / "images" / "a.png", np.full((8, 8), 7, np.uint8))
    write_png(out / "images" / "orphan.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    pd.DataFrame({"image_id": [flat.name], "path": ["images/a.png"]}).to_csv(out / "manifest.csv", index=False)
    pd.DataFrame({"file": [str(good.path), str(twice.path), str(twice.path)],
                  "reason": ["x: MemoryError: cannot allocate", "line one\nline two", "y"],
                  "code": ["DECODE_ERROR", "", "BAD_HEADER"]}).to_csv(out / "failures.csv", index=False)
    report = BatchReport(status="ok", seconds=0.0, inputs=len(inputs))
    check_batch(inputs, out, report)
    assert any(good.name in v for v in violations(report, "good"))
    assert any(flat.name in v for v in violations(report, "constant"))
    assert any(lost.name in v for v in violations(report, "accounting"))
    assert any(twice.name in v and "2 in failures.csv" in v for v in violations(report, "accounting"))
    assert any("orphan.png" in v for v in violations(report, "accounting"))
    assert any("multi-line" in v for v in violations(report, "reason"))
    assert any("without a code" in v for v in violations(report, "reason"))
    assert any(good.name in v for v in violations(report, "memory"))
