"""CLI start-up: how long ``--help`` and an argument error take to come back.

A user who mistypes a path should hear about it at once, not after torch, timm and transformers
have loaded (5-35 s on a loaded machine). Each case runs ``mammoclip`` in a fresh interpreter, as a
user would, ``--repeats`` times (default 5); the table shows the median and the range in seconds.

Usage::

    python bench/cli.py [--repeats N]

Prints a table and writes ``bench/out/cli.json`` (with the machine and its load average, since on a
shared machine the load changes every number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "cli.json"

#: name -> arguments after ``mammoclip``; the exit code each must give.
CASES: dict[str, tuple[list[str], int]] = {
    "mammoclip --help": (["--help"], 0),
    "mammoclip zeroshot --help": (["zeroshot", "--help"], 0),
    "zeroshot, missing --task (argparse error)": (
        ["zeroshot", "--checkpoint", "/nonexistent", "--manifest", "/nonexistent"], 2),
    "zeroshot --task mass, bad --manifest path": (
        ["zeroshot", "--checkpoint", "/nonexistent", "--manifest", "/nonexistent", "--task", "mass"], 2),
    "zeroshot --task mass, bad --checkpoint path": (
        ["zeroshot", "--checkpoint", "/nonexistent", "--manifest", "{manifest}", "--task", "mass"], 2),
    "misspelt command (did you mean)": (["zeroshto"], 2),
}


def time_case(args: list[str], code: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` fresh ``python -m mammoclip ARGS`` runs (each must exit with ``code``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    times = []
    with tempfile.TemporaryDirectory() as tmp:  # a manifest that exists, so the checkpoint is what fails
        (Path(tmp) / "manifest.csv").write_text("")
        args = [a.replace("{manifest}", tmp) for a in args]
        for _ in range(repeats):
            times.append(_run_once(args, code, env))
    return times


def _run_once(args: list[str], code: int, env: dict[str, str]) -> float:
    """One fresh ``python -m mammoclip ARGS`` run, timed; it must give the expected exit code (a fast
    run that failed for another reason would not count)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mammoclip", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != code:
        raise SystemExit(f"mammoclip {' '.join(args)}: exit {proc.returncode}, expected {code}\n{proc.stderr}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per case (default 5)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = []
    print(f"{'case':<46} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, (argv, code) in CASES.items():
        times = time_case(argv, code, args.repeats)
        rows.append({"case": name, "argv": argv, "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "runs": times})
        print(f"{name:<46} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}")
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    print(f"machine: {machine['platform']}, {machine['cpus']} CPUs, load average {load_before[0]:.1f} "
          f"before, {machine['load_avg_after'][0]:.1f} after")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"repeats": args.repeats, "machine": machine, "cases": rows}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
