"""Detection speed and memory: RetinaNet on the image tower, train step and inference, on CPU by default.

Cases (each in a fresh process, so that its peak resident memory is its own):

* ``lite-frozen-train``: mammoclip-lite at the demo size (256x160), encoder frozen, one optimiser step;
* ``lite-finetune-train``: the same with the encoder fine-tuned;
* ``lite-infer``: detections (heads, NMS) at 256x160;
* ``b5-infer``: the paper B5 tower at 1520x912, forward only (random weights: speed does not depend on them).

Images are random stored-integer tensors with two boxes each, so nothing is read from disk. Reported:
images/s (best of ``--repeats`` timed rounds after a warm-up round; on a shared machine the best is
the least disturbed) and the process's peak resident memory.

    python bench/detect.py [--cases lite-frozen-train,lite-infer] [--device cpu] [--threads 2]

Prints a table and writes ``bench/out/detect.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: case -> (model, (H, W), batch size, mode, rounds per timing)
CASES: dict[str, tuple[str, tuple[int, int], int, str, int]] = {
    "lite-frozen-train": ("mammoclip-lite", (256, 160), 8, "frozen", 5),
    "lite-finetune-train": ("mammoclip-lite", (256, 160), 8, "finetune", 5),
    "lite-infer": ("mammoclip-lite", (256, 160), 8, "infer", 5),
    "b5-infer": ("mammoclip-b5-paper", (1520, 912), 1, "infer", 2),
}


def run_case(name: str, device: str, repeats: int) -> dict[str, Any]:
    import torch

    from mammoclip.detect.config import DetectorCfg
    from mammoclip.detect.model import build_detector

    model, size, batch, mode, rounds = CASES[name]
    torch.manual_seed(0)
    det = build_detector(model, DetectorCfg(image_size=size), init="random", freeze_encoder=mode == "frozen").to(device)
    images = torch.randint(0, 255, (batch, 1, *size), dtype=torch.uint8, device=device)
    h, w = size
    box = torch.tensor([[w * 0.2, h * 0.3, w * 0.35, h * 0.4], [w * 0.5, h * 0.5, w * 0.6, h * 0.58]], device=device)
    targets = [{"boxes": box, "labels": torch.zeros(2, dtype=torch.int64, device=device)}] * batch
    optim = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        if mode == "infer":
            det.eval()
            with torch.inference_mode():
                det(images)
        else:
            det.train()
            losses = det(images, targets)
            optim.zero_grad(set_to_none=True)
            (losses["classification"] + losses["bbox_regression"]).backward()
            optim.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up: kernel selection, allocator
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(rounds):
            step()
        best = max(best, rounds * batch / (time.perf_counter() - t0))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in det.parameters() if p.requires_grad)
    return {"case": name, "model": model, "image_size": list(size), "batch_size": batch, "mode": mode,
            "images_per_s": best, "peak_rss_mib": peak_mib,
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
            "trainable_parameters": trainable, "taps": det.describe_taps(), "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each case's process")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "detect.json"))
    args = p.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, args.device, args.repeats)))
        return []
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {list(CASES)}")
        out = subprocess.run([sys.executable, __file__, "--case", name, "--device", args.device, "--threads",
                              str(args.threads), "--repeats", str(args.repeats)], env=env, capture_output=True,
                             text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'case':<22}{'size':>10}{'batch':>6}{'images/s':>10}{'peak RSS MiB':>14}")
    for r in results:
        size = f"{r['image_size'][0]}x{r['image_size'][1]}"
        print(f"{r['case']:<22}{size:>10}{r['batch_size']:>6}{r['images_per_s']:>10.2f}{r['peak_rss_mib']:>14.0f}")
    print(f"device {args.device}, {args.threads} threads, cpu {platform.processor() or platform.machine()}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": args.device, "threads": args.threads, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
