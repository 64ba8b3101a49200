"""Short deterministic fuzz run: DICOM mutants through the real batch (2 workers) and the folder adapter.

One batch of 48 byte-level mutants (every mutation kind in round robin, seed 0) mixed with 6 good files
(one a real CBIS-DDSM film), one batch of special files (FIFO, folder, empty file, links) with 3 good
files, and the folder adapter over both. Each test checks one invariant and, when it fails, lists every
offending input with its mutation, so that ``python -m pytest tests/fuzz`` names the instances.
The long run is ``make fuzz`` (``bench/fuzz.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import ADDRESS_SPACE_CAP, BatchReport, run_adapter, run_batch, violations
from tests.fuzz.mutator import SPECIAL, Mutant, generate, good_copy, make_seeds, mutate

pytestmark = pytest.mark.slow

N_MUTANTS = 48
SEED = 0


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("fuzz")
    seeds = make_seeds(work / "seeds", synthetic_patients=2, real=1)
    root = work / "in"
    mutants = generate(seeds, N_MUTANTS, seed=SEED, root=root)
    goods = [good_copy(s, 1000 + i, root) for i, s in enumerate([*seeds[::4], seeds[-1]])]
    specials = [mutate(seeds, kind, 2000 + i, SEED, root) for i, kind in enumerate(SPECIAL)]
    special_goods = [good_copy(s, 3000 + i, root) for i, s in enumerate(seeds[1:4])]
    main = run_batch(mutants + goods, work / "main", workers=2, timeout=300)
    special = run_batch(specials + special_goods, work / "special", workers=2, timeout=120)
    everything = mutants + goods + specials + special_goods
    adapter = run_adapter(everything, root, work / "adapter", timeout=120)
    return {"main": main, "special": special, "adapter": adapter, "inputs": everything, "goods": goods}


def _batches(fuzz_run: dict[str, object]) -> list[BatchReport]:
    return [fuzz_run["main"], fuzz_run["special"]]  # type: ignore[list-item]


def _assert_none(found: list[str], what: str) -> None:
    assert not found, f"{len(found)} {what}:\n  " + "\n  ".join(found)


def test_batches_finish_without_crash_or_hang(fuzz_run) -> None:
    _assert_none([v for b in _batches(fuzz_run) for v in violations(b, "finish")], "batch crash(es)/hang(s)")


def test_every_input_accounted_for_exactly_once(fuzz_run) -> None:
    found = [v for b in _batches(fuzz_run) for v in violations(b, "accounting")]
    _assert_none(found, "input(s) not accounted for exactly once")
    main: BatchReport = fuzz_run["main"]
    assert len(main.outcomes) == main.inputs == N_MUTANTS + len(fuzz_run["goods"])


def test_good_files_are_processed(fuzz_run) -> None:
    _assert_none([v for b in _batches(fuzz_run) for v in violations(b, "good")], "good file(s) failed")
    assert sum(outcome == "ok" for outcome in fuzz_run["main"].outcomes.values()) >= len(fuzz_run["goods"])


def test_failure_reasons_are_one_line_with_a_code(fuzz_run) -> None:
    _assert_none([v for b in _batches(fuzz_run) for v in violations(b, "reason")], "bad failure reason(s)")
    # the mutants really fail: a harness whose mutations all decode cleanly would test nothing
    assert sum(outcome != "ok" for outcome in fuzz_run["main"].outcomes.values()) >= N_MUTANTS // 2


def test_no_output_is_a_single_value(fuzz_run) -> None:
    _assert_none([v for b in _batches(fuzz_run) for v in violations(b, "constant")],
                 "constant image(s) reported as success")


def test_memory_stays_under_the_cap(fuzz_run) -> None:
    _assert_none([v for b in _batches(fuzz_run) for v in violations(b, "memory")], "input(s) hit the memory cap")
    peak = max(b.children_peak_rss_kb or 0 for b in _batches(fuzz_run))
    assert 0 < peak * 1024 < ADDRESS_SPACE_CAP


def test_folder_adapter_lists_or_skips_every_file(fuzz_run) -> None:
    adapter = fuzz_run["adapter"]
    _assert_none(adapter.violations, "folder adapter violation(s)")
    inputs: list[Mutant] = fuzz_run["inputs"]
    files = sum(not Path(m.path).is_dir() for m in inputs)
    assert adapter.images + adapter.skipped == files
