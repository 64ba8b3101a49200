"""Long fuzz run (``make fuzz``): thousands of DICOM mutants through the real batch, plus text and CSV cases.

Rounds until the time budget is spent (``FUZZ_SECONDS``, default 600) or ``FUZZ_CASES`` DICOM cases
are done. Each round: one batch of ``--batch`` byte-level mutants (every mutation kind in turn, seeds
including the 8 real CBIS-DDSM films) mixed with good files, preprocessed with 2 workers in a child
process under a wall-clock limit (:mod:`tests.fuzz.harness`); one batch of special files (FIFO,
folder, empty file, links) with good files; the folder adapter over the round's folder; and
``--text`` report-parser and manifest-reader cases. Prints a table (cases by mutation kind, outcomes
by failure code, crashes, hangs, peak worker memory, every violation) and writes
``bench/out/fuzz.json``. Mutant ``i`` of run ``--seed s`` is reproduced by
``tests.fuzz.mutator.mutate(seeds, kind, i, s, root)``.

    FUZZ_SECONDS=600 .venv/bin/python bench/fuzz.py [--seed 1] [--batch 150] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import run_adapter, run_batch  # noqa: E402
from tests.fuzz.mutator import (  # noqa: E402
    SPECIAL,
    byte_kinds,
    good_copy,
    make_seeds,
    manifest_csv,
    mutate,
    report_text,
)


def _text_cases(n: int, seed: int, work: Path) -> dict[str, Counter[str]]:
    """``n`` report texts and ``n`` manifest CSVs; counts outcomes, names any foreign exception."""
    from mammoclip.data.manifest import load_bundle, read_manifest
    from mammoclip.errors import MammoclipError
    from mammoclip.text.reports import parse_report

    logging.disable(logging.WARNING)
    out: dict[str, Counter[str]] = {"report": Counter(), "manifest": Counter()}
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        try:
            parse_report(report_text(rng), f"r{i}")
            out["report"]["ok"] += 1
        except MammoclipError:
            out["report"]["own error"] += 1
        except Exception as err:  # noqa: BLE001 - what the fuzzer is looking for
            out["report"][f"FOREIGN {type(err).__name__}"] += 1
        data, detail = manifest_csv(np.random.default_rng([seed, 8, i]))
        path = work / "manifest.csv"
        path.write_bytes(data)
        for fn in (read_manifest, load_bundle):
            try:
                fn(path)
                out["manifest"]["ok"] += 1
            except MammoclipError:
                out["manifest"]["own error"] += 1
            except Exception as err:  # noqa: BLE001
                out["manifest"][f"FOREIGN {type(err).__name__} ({detail.split(' + ')[0]})"] += 1
    logging.disable(logging.NOTSET)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)))
    ap.add_argument("--cases", type=int, default=int(os.environ.get("FUZZ_CASES", 0)), help="0: no case limit")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=150, help="mutants per batch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--text", type=int, default=100, help="report and manifest cases per round")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "fuzz.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mammoclip-fuzz-"))
    seeds = make_seeds(work / "seeds", synthetic_patients=3, real=8)
    start = time.perf_counter()
    kinds, specials = byte_kinds(), list(SPECIAL)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    codes: Counter[str] = Counter()
    violations: list[dict[str, str]] = []
    stats: dict[str, Any] = {"batches": 0, "crashes": 0, "hangs": 0, "adapter_runs": 0, "adapter_failures": 0,
                             "worker_peak_rss_kb": 0, "children_peak_rss_kb": 0, "cases": 0}
    text: dict[str, Counter[str]] = {"report": Counter(), "manifest": Counter()}
    index, rnd = 0, 0
    try:
        while rnd == 0 or (time.perf_counter() - start < args.seconds
                           and not (args.cases and stats["cases"] >= args.cases)):
            root = work / f"round{rnd}"
            mutants = [mutate(seeds, kinds[(index + i) % len(kinds)], index + i, args.seed, root)
                       for i in range(args.batch)]
            goods = [good_copy(seeds[(rnd * 5 + j) % len(seeds)], index + args.batch + j, root) for j in range(4)]
            index += args.batch + 4
            extra = [mutate(seeds, kind, index + j, args.seed, root) for j, kind in enumerate(specials)]
            extra_goods = [good_copy(seeds[(rnd + j) % len(seeds)], index + len(specials) + j, root) for j in range(2)]
            index += len(specials) + 2
            batches = [(mutants + goods, 60 + 3 * len(mutants)), (extra + extra_goods, 120)]
            for items, limit in batches:
                report = run_batch(items, root / f"work{len(items)}", workers=args.workers, timeout=limit)
                stats["batches"] += 1
                stats["crashes"] += report.status == "crash"
                stats["hangs"] += report.status == "hang"
                for key in ("worker_peak_rss_kb", "children_peak_rss_kb"):
                    stats[key] = max(stats[key], getattr(report, key) or 0)
                for m in items:
                    outcome = report.outcomes.get(m.name, report.status if report.status != "ok" else "missing")
                    by_kind[m.kind]["ok" if outcome == "ok" else "failed"] += 1
                    codes[outcome] += 1
                    stats["cases"] += 1
                violations += [{"round": str(rnd), "category": c, "message": v} for c, v in report.violations]
            adapter = run_adapter(mutants + goods + extra + extra_goods, root, root / "adapter", timeout=300)
            stats["adapter_runs"] += 1
            stats["adapter_failures"] += bool(adapter.violations)
            violations += [{"round": str(rnd), "category": f"adapter {c}", "message": v} for c, v in adapter.violations]
            for name, counts in _text_cases(args.text, args.seed * 1000 + rnd, root).items():
                text[name].update(counts)
            shutil.rmtree(root, ignore_errors=True)
            rnd += 1
            print(f"round {rnd}: {stats['cases']} DICOM cases, {len(violations)} violation(s), "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start

    print(f"\n{stats['cases']} DICOM cases in {stats['batches']} batches ({args.workers} workers), {seconds:.0f} s, "
          f"seed {args.seed}")
    print("\n| mutation kind | cases | processed | failed |\n|---|---|---|---|")
    for kind in sorted(by_kind):
        c = by_kind[kind]
        print(f"| {kind} | {c['ok'] + c['failed']} | {c['ok']} | {c['failed']} |")
    print("\n| outcome (failure code) | cases |\n|---|---|")
    for code, n in codes.most_common():
        print(f"| {code} | {n} |")
    print(f"\nbatch crashes {stats['crashes']}, hangs {stats['hangs']}; folder adapter runs {stats['adapter_runs']}, "
          f"with violations {stats['adapter_failures']}")
    print(f"peak worker RSS: {stats['worker_peak_rss_kb'] / 1024:.0f} MiB reported by workers, "
          f"{stats['children_peak_rss_kb'] / 1024:.0f} MiB by getrusage(RUSAGE_CHILDREN)")
    for name, counts in text.items():
        print(f"{name} cases: {dict(counts)}")
    by_cat = Counter(v["category"] for v in violations)
    print(f"\nviolations: {len(violations)} {dict(by_cat)}")
    for v in violations[:40]:
        print(f"- [{v['category']}] {v['message'][:300]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "seconds": round(seconds, 1), "seed": args.seed, "batch": args.batch, "workers": args.workers,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        **stats, "by_kind": {k: dict(v) for k, v in by_kind.items()}, "outcomes": dict(codes),
        "text": {k: dict(v) for k, v in text.items()}, "violations": violations,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
