"""``mammoclip serve`` under load, on loopback only: throughput and latency percentiles of ``POST /v1/embed``.

The server runs in this process (uvicorn in a thread, 127.0.0.1, a free port) with ``mammoclip-lite`` (or
``--model``); clients are threads with one ``httpx.Client`` each, uploading a synthetic DICOM. For each
concurrency (1, 4, 16) and batching on/off it sends ``--requests`` requests (bounded also by ``--max-seconds``
per case) and reports requests/s and p50/p95/p99 latency; any failed request is counted and makes the
exit code 1.

    python bench/serve.py [--model mammoclip-lite] [--requests 64] [--concurrency 1,4,16]

Prints a table and writes ``bench/out/serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(engine: Any, ckpt: str, body: bytes, concurrency: int, batch: int, n: int, max_s: float) -> dict[str, Any]:
    import httpx
    import numpy as np

    from mammoclip.serve import ServeConfig, build_server, create_app

    cfg = ServeConfig(checkpoint=ckpt, port=_free_port(), max_concurrency=max(64, concurrency),
                      batch_max_size=batch, batch_max_wait_ms=5.0, device=str(engine.device))
    server = build_server(cfg, create_app(cfg, engine))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{cfg.port}/v1/embed"
    headers = {"content-type": "application/dicom"}
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + max_s
    counter = iter(range(n))

    def worker() -> None:
        nonlocal failures
        with httpx.Client(timeout=60) as client:
            client.post(url, content=body, headers=headers)  # warm-up, not timed
            for _ in counter:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                r = client.post(url, content=body, headers=headers)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    failures += r.status_code != 200

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    server.should_exit = True
    thread.join(30)
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "batching": batch > 1, "batch_max_size": batch, "requests": len(latencies),
            "failed": failures, "throughput_rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mammoclip-lite")
    ap.add_argument("--requests", type=int, default=64, help="requests per case (plus one warm-up per client)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time bound per case")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()

    import torch

    from mammoclip.data.manifest import load_bundle
    from mammoclip.models import create_model, save_checkpoint
    from mammoclip.serve import ServeConfig
    from mammoclip.serve.engine import Engine
    from mammoclip.synthetic import generate_cohort

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ckpt = str(save_checkpoint(create_model(args.model), tmp / "ckpt"))
    manifest = generate_cohort(tmp / "dicoms", 1, seed=0, image_size=(1024, 640), fmt="dicom", progress=False)
    bundle = load_bundle(manifest)
    body = Path(bundle.abspath(bundle.images["path"].iloc[0])).read_bytes()
    engine = Engine(ServeConfig(checkpoint=ckpt, device=args.device))
    rows = []
    for conc in (int(c) for c in args.concurrency.split(",")):
        for batch in (1, 8):
            row = run_case(engine, ckpt, body, conc, batch, args.requests, args.max_seconds)
            rows.append(row)
            print(f"concurrency {conc:>2}  batching {'on ' if batch > 1 else 'off'}  {row['throughput_rps']:6.1f} req/s  "
                  f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                  f"failed {row['failed']}/{row['requests']}", flush=True)
    h, w = engine.prep.size
    out = Path(__file__).resolve().parent / "out" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "input_size": [h, w], "dicom_bytes": len(body),
                               "dicom_size": [1024, 640], "device": args.device, "torch_threads": args.threads,
                               "cpus": os.cpu_count(), "python": platform.python_version(), "rows": rows}, indent=1))
    print(out)
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
