"""Inference under torchrun: ``mammoclip embed`` on 1 process vs N CPU processes (gloo), end to end.

Runs the command as a user does (``python -m mammoclip embed`` and ``torchrun --nproc_per_node N -m
mammoclip embed``) on the same synthetic cohort, so the times include each process's start (imports,
model build) and the gather; checks that the two embedding files agree and reports the largest
difference. On a CPU the processes share the cores: this measures the overhead of the distributed path
there, not the GPU speed-up (N GPUs each embed 1/N of the rows).

Usage::

    python bench/distributed_inference.py [--model mammoclip-lite] [--patients 64] [--nproc 2] [--workers 1]

Prints a table and writes ``bench/out/distributed_inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mammoclip-lite", help="registry name (built under a fixed seed)")
    p.add_argument("--patients", type=int, default=64, help="synthetic cohort size (4 images each)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    from mammoclip.embed import load_embeddings
    from mammoclip.models.registry import get_model_config
    from mammoclip.synthetic import generate_cohort

    size = tuple(get_model_config(args.model)["preprocess"]["image_size"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = generate_cohort(folder / "cohort", n_patients=args.patients, seed=0, image_size=size,
                                   fmt="png", workers=2, progress=False)
        common = ["-m", "mammoclip", "embed", "--checkpoint", args.model, "--manifest", str(manifest),
                  "--what", "images", "--workers", str(args.workers), "--batch-size", str(args.batch_size),
                  "--device", "cpu"]
        one = _timed([sys.executable, *common, "--out", str(folder / "one.parquet")])
        many = _timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                       "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *common,
                       "--out", str(folder / "many.parquet")])
        t1, m1, _ = load_embeddings(folder / "one.parquet")
        t2, m2, _ = load_embeddings(folder / "many.parquet")
        n = len(t1)
        same_rows = t1["id"].tolist() == t2["id"].tolist()
        diff = float(np.abs(m1 - m2).max())
    result = {
        "model": args.model, "images": n, "nproc": args.nproc, "workers": args.workers,
        "one_process_s": round(one, 2), "torchrun_s": round(many, 2),
        "one_process_images_per_s": round(n / one, 2), "torchrun_images_per_s": round(n / many, 2),
        "same_rows_in_order": same_rows, "max_abs_diff": diff,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "torch_threads": 1,
    }
    print(f"| processes | wall s (end to end) | images/s | rows equal, in order | max |diff| |\n|---|---|---|---|---|\n"
          f"| 1 | {one:.1f} | {n / one:.1f} | - | - |\n"
          f"| {args.nproc} (torchrun, gloo) | {many:.1f} | {n / many:.1f} | {same_rows} | {diff:.1e} |")
    out = Path(__file__).resolve().parent / "out" / "distributed_inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
