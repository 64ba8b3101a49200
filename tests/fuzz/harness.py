"""Run fuzzed inputs through the real batch preprocessing and the folder adapter, and check the invariants.

Each batch runs in a child process (``python -m tests.fuzz.harness batch SPEC``) in its own session,
under a wall-clock limit (a hang is killed with its whole process group, workers included) and an
address-space cap (:data:`ADDRESS_SPACE_CAP`, inherited by the pool workers) so that a decoder that
ignores the size budget fails with ``MemoryError`` instead of taking the shared machine's memory.
Hitting the cap is itself a violation: the budget should have refused the file first.

Invariants of a batch (:func:`check_batch`), each violation naming the mutant, its mutation and the
observed reason:

* the batch finishes: exit 0, no traceback, no hang;
* every input is accounted for exactly once: a row in the output manifest (with its PNG) or exactly
  one row in ``failures.csv``; the images folder holds no PNG that no row names;
* every good (unmutated) input is processed;
* every failure reason is one line, and its ``code`` is non-empty where ``failures.csv`` has one;
* no output PNG is a single constant value;
* no input reached the address-space cap.

The peak RSS of the pool workers is measured twice: the largest ``peak_rss_kb`` the workers report
with their results, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the child after its forkserver
(whose children the workers are) has been stopped and reaped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.mutator import Mutant

ROOT = Path(__file__).resolve().parents[2]
#: Address space of the batch process and each worker (bytes). Real mammograms need < 1 GiB.
ADDRESS_SPACE_CAP: int = 6 << 30
#: Output size of the fuzzed batches: small, the point is the decoder, not the resize.
OUT_SIZE: tuple[int, int] = (128, 80)


@dataclass
class BatchReport:
    """What one batch did and which invariants it broke."""

    status: str  # "ok", "crash" (non-zero exit or a traceback), "hang" (wall-clock limit)
    seconds: float
    inputs: int
    outcomes: dict[str, str] = field(default_factory=dict)  # mutant name -> "ok" or failure code
    reasons: dict[str, str] = field(default_factory=dict)  # mutant name -> failure reason
    violations: list[tuple[str, str]] = field(default_factory=list)  # (category, message)
    worker_peak_rss_kb: int | None = None  # largest peak reported by a worker with a result
    children_peak_rss_kb: int | None = None  # getrusage(RUSAGE_CHILDREN) of the batch process
    stderr_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Violation categories, one per invariant.
CATEGORIES: tuple[str, ...] = ("finish", "raised", "accounting", "good", "reason", "constant", "memory")


def _violate(report: BatchReport | AdapterReport, category: str, message: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown violation category {category!r}")
    report.violations.append((category, message))


def violations(report: BatchReport | AdapterReport, category: str) -> list[str]:
    """The messages of one category (a test asserts this is empty and prints it otherwise)."""
    return [message for cat, message in report.violations if cat == category]


# --- child side ----------------------------------------------------------------------------------------


def _cap_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
    except (ImportError, ValueError, OSError):
        pass


def _stop_forkserver() -> None:
    """Stop and reap the forkserver, so its reaped workers count in ``RUSAGE_CHILDREN``."""
    try:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - private API; without it only the workers' own reports count
        pass


def _child_batch(spec_path: Path) -> None:
    import resource

    import pandas as pd

    from mammoclip.data.manifest import Bundle
    from mammoclip.data.preprocess import PreprocessOptions, preprocess

    spec = json.loads(spec_path.read_text())
    rows = [{"image_id": item["name"], "patient_id": item["name"], "study_id": "S1", "laterality": "L",
             "view": "CC", "path": item["path"], "split": "train", "source": "fuzz"} for item in spec["inputs"]]
    peaks: list[int] = []

    def on_result(res: dict[str, Any]) -> None:
        if res.get("peak_rss_kb"):
            peaks.append(int(res["peak_rss_kb"]))

    preprocess(Bundle(pd.DataFrame(rows), root=Path(spec["out"])), spec["out"],
               PreprocessOptions(size=tuple(spec["size"])), workers=spec["workers"], progress=False,
               on_result=on_result)
    _stop_forkserver()
    children = int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    Path(spec["out"], "fuzz-memory.json").write_text(json.dumps(
        {"worker_peak_rss_kb": max(peaks) if peaks else None, "children_peak_rss_kb": children or None}))


def _child_adapter(spec_path: Path) -> None:
    from mammoclip.data.adapters import build_bundle
    from mammoclip.errors import MammoclipError

    spec = json.loads(spec_path.read_text())
    result: dict[str, Any]
    try:
        bundle = build_bundle(spec["root"], adapter="folder")
        result = {"images": [str(Path(spec["root"], p)) for p in bundle.images["path"]],
                  "image_ids": [str(i) for i in bundle.images["image_id"]],
                  "skipped": [[str(f), str(r)] for f, r in bundle.images.attrs.get("skipped", [])]}
    except MammoclipError as err:
        result = {"error": f"{type(err).__name__}: {err}", "ours": True}
    except BaseException as err:  # noqa: BLE001 - the point is to record what escaped
        result = {"error": f"{type(err).__name__}: {err}", "ours": False}
    Path(spec["result"]).write_text(json.dumps(result))


# --- parent side ---------------------------------------------------------------------------------------


def _run_child(mode: str, spec: dict[str, Any], spec_path: Path, timeout: float) -> tuple[str, float, str]:
    """Run the child; returns (status, seconds, stderr tail). A hang kills the whole process group."""
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.harness", mode, str(spec_path)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "crash"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        status = "hang"
    tail = err.decode("utf-8", "replace")[-3000:]
    if status == "ok" and "Traceback (most recent call last)" in tail:
        status = "crash"
    if status == "crash":
        tail = f"exit {proc.returncode}: {tail}"
    return status, time.perf_counter() - start, tail


def _by_name(mutants: list[Mutant]) -> dict[str, Mutant]:
    return {m.name: m for m in mutants}


def _code_of(reason: str, code: str | None) -> str:
    """The failure code: the ``code`` column when present, else the exception type named in the reason."""
    if code:
        return code
    match = re.search(r":\s*([A-Z][A-Za-z]*(?:Error|Exception|Panic))\b", reason)
    return f"(no code) {match.group(1)}" if match else "(no code)"


def run_batch(mutants: list[Mutant], work: str | Path, *, workers: int = 2, timeout: float = 300.0,
              size: tuple[int, int] = OUT_SIZE) -> BatchReport:
    """Preprocess ``mutants`` as one manifest with ``workers`` processes; check every invariant."""
    work = Path(work)
    out = work / "out"
    work.mkdir(parents=True, exist_ok=True)
    spec = {"inputs": [{"name": m.name, "path": str(m.path)} for m in mutants], "out": str(out),
            "workers": workers, "size": list(size)}
    status, seconds, tail = _run_child("batch", spec, work / "batch-spec.json", timeout)
    report = BatchReport(status=status, seconds=seconds, inputs=len(mutants), stderr_tail=tail)
    if status != "ok":
        names = ", ".join(m.describe() for m in mutants if m.kind != "none")
        last = (tail.strip().splitlines() or [""])[-1][:300]
        _violate(report, "finish", f"batch {status} after {seconds:.0f} s ({last}); "
                                 f"inputs: {names[:2000]}")
        return report
    memory = json.loads((out / "fuzz-memory.json").read_text())
    report.worker_peak_rss_kb = memory["worker_peak_rss_kb"]
    report.children_peak_rss_kb = memory["children_peak_rss_kb"]
    check_batch(mutants, out, report)
    return report


def check_batch(mutants: list[Mutant], out: Path, report: BatchReport) -> None:
    """Fill ``report.outcomes``/``reasons`` from a finished batch's output folder and list the violations."""
    import numpy as np
    import pandas as pd

    from mammoclip.imaging.imageio import read_image

    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    failures = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
    has_code = "code" in failures.columns
    by_name = _by_name(mutants)
    seen_fail: Counter[str] = Counter()
    for _, row in failures.iterrows():
        stem = Path(row["file"]).stem
        name = stem if stem in by_name else next((n for n in by_name if str(by_name[n].path) == row["file"]), None)
        if name is None:
            _violate(report, "accounting", f"failures.csv names a file that is no input: {row['file']!r}")
            continue
        seen_fail[name] += 1
        reason = str(row["reason"])
        code = str(row["code"]) if has_code else None
        report.outcomes[name] = _code_of(reason, code)
        report.reasons[name] = reason
        m = by_name[name]
        if "\n" in reason or "\r" in reason:
            _violate(report, "reason", f"multi-line failure reason for {m.describe()}: {reason[:300]!r}")
        if has_code and not code:
            _violate(report, "reason", f"failure without a code for {m.describe()}: {reason[:200]}")
        if "MemoryError" in reason or "Cannot allocate memory" in reason:
            _violate(report, "memory", f"hit the harness's {ADDRESS_SPACE_CAP >> 30} GiB address-space cap "
                                     f"(no size budget stopped it first): {m.describe()}: {reason[:200]}")
    processed = Counter(manifest["image_id"]) if len(manifest.columns) else Counter()
    for name, m in by_name.items():
        n_ok, n_fail = processed.get(name, 0), seen_fail.get(name, 0)
        if n_ok:
            report.outcomes.setdefault(name, "ok")
        if n_ok + n_fail != 1:
            _violate(report, "accounting", f"accounted for {n_ok} time(s) in manifest.csv and {n_fail} in failures.csv "
                                     f"(expected exactly once): {m.describe()}")
        if m.good and not n_ok:
            _violate(report, "good", f"good file not processed: {m.describe()}: {report.reasons.get(name, '?')}")
    pngs = {p.resolve() for p in (out / "images").rglob("*.png")} if (out / "images").exists() else set()
    named = set()
    for iid, rel in zip(manifest.get("image_id", []), manifest.get("path", []), strict=True):
        png = (out / rel).resolve()
        named.add(png)
        if not png.is_file():
            _violate(report, "accounting", f"manifest row {iid} has no PNG at {rel}")
            continue
        image = np.asarray(read_image(png))
        if image.size == 0 or image.min() == image.max():
            m = by_name.get(iid)
            _violate(report, "constant", f"output is a single value ({image.min() if image.size else 'empty'}), "
                                     f"recorded as a success: {m.describe() if m else iid}")
    for png in sorted(pngs - named):
        _violate(report, "accounting", f"PNG written for no manifest row: {png.relative_to(out.resolve())}")


@dataclass
class AdapterReport:
    status: str  # "ok", "raised", "crash", "hang"
    seconds: float
    images: int = 0
    skipped: int = 0
    violations: list[tuple[str, str]] = field(default_factory=list)  # (category, message)


def run_adapter(mutants: list[Mutant], root: str | Path, work: str | Path, *, timeout: float = 120.0
                ) -> AdapterReport:
    """``build_bundle(root, adapter="folder")`` over a folder of mutants: it must list or skip each, never raise."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    spec = {"root": str(root), "result": str(work / "adapter-result.json")}
    status, seconds, tail = _run_child("adapter", spec, work / "adapter-spec.json", timeout)
    report = AdapterReport(status=status, seconds=seconds)
    if status != "ok":
        last = tail.strip().splitlines()[-1:] or [""]
        _violate(report, "finish", f"folder adapter {status} after {seconds:.0f} s: {last[0][:300]}")
        return report
    result = json.loads(Path(spec["result"]).read_text())
    if "error" in result:
        report.status = "raised"
        _violate(report, "raised", f"folder adapter raised {'its own' if result['ours'] else 'a foreign'} error "
                                 f"on a folder that holds good files: {result['error'][:300]}")
        return report
    report.images, report.skipped = len(result["images"]), len(result["skipped"])
    listed = Counter(str(Path(p).resolve()) for p in result["images"])
    skipped = Counter(str(Path(f).resolve()) for f, _ in result["skipped"])
    for m in mutants:
        key = str(m.path.resolve())  # both sides resolved: a link and its target are one input
        n = listed.get(key, 0) + skipped.get(key, 0)
        if n != 1 and not (n == 0 and m.path.is_dir()):  # a folder named *.dcm is no file to list
            _violate(report, "accounting", f"folder adapter lists {m.describe()} {n} time(s) (expected once, as an "
                                     "image or skipped)")
        if m.good and not listed.get(key):
            _violate(report, "good", f"folder adapter left out a good file: {m.describe()}")
    for reason in (r for _, r in result["skipped"]):
        if "\n" in reason:
            _violate(report, "reason", f"multi-line skip reason: {reason[:200]!r}")
    if len(set(result["image_ids"])) != len(result["image_ids"]):
        _violate(report, "accounting", "folder adapter gave two images the same image_id")
    return report


def main(argv: list[str]) -> None:
    mode, spec = argv[0], Path(argv[1])
    _cap_memory()
    {"batch": _child_batch, "adapter": _child_adapter}[mode](spec)


if __name__ == "__main__":
    main(sys.argv[1:])
