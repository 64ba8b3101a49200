"""Model speed and memory: forward and forward+backward of the image path, per image.

Grid: model x precision (fp32 / bf16 autocast) x memory format (channels_last on/off) x gradient
checkpointing (on/off, forward+backward only). Defaults: ``mammoclip-lite`` at 512x320 and
``mammoclip-b5-paper`` at 1520x912 (the paper's size; random weights, nothing is downloaded).
The image path dominates the cost (the text tower sees 256 tokens at most), so it is what is timed;
the paper model is built with a 1-layer text tower to save build time.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the process' peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` before each measurement) minus the resident
set before it, i.e. activations + gradients + workspace.

Usage::

    python bench/models.py [--device cpu|cuda] [--full] [--batch-size N] [--repeats N]

On CPU the grid is reduced unless ``--full`` (B5 at 1520x912 takes tens of seconds per step on two
cores). Prints a table and writes ``bench/out/models.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = {"lite": ("mammoclip-lite", (512, 320)), "b5": ("mammoclip-b5-paper", (1520, 912))}
SMALL_TEXT = {"hf_config": {"num_hidden_layers": 1}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; return the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024


def _step(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        model.encode_image(x).float().sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model.encode_image(x)


def measure(model: torch.nn.Module, size: tuple[int, int], batch: int, device: torch.device, bf16: bool,
            channels_last: bool, ckpt: bool, backward: bool, repeats: int) -> dict:
    """Time ``repeats`` steps after one warm-up step; return seconds per image and peak bytes."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    model.set_grad_checkpointing(ckpt)
    model.train(backward)
    x = torch.randn(batch, 1, *size, device=device).contiguous(memory_format=fmt)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        _step(model, x, backward)  # warm-up (allocator, cudnn autotune, lazy init)
        _sync(device)
        base = _reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            _step(model, x, backward)
        _sync(device)
        seconds = (time.perf_counter() - t0) / (repeats * batch)
    return {"s_per_image": seconds, "images_per_s": 1.0 / seconds,
            "peak_mib": max(_peak(device) - base, 0) / 2**20}


def grid(device: torch.device, full: bool) -> list[tuple]:
    """(model key, bf16, channels_last, ckpt, backward) combinations to run."""
    if full or device.type == "cuda":
        rows = []
        for key, bf16, cl in itertools.product(MODELS, (False, True), (False, True)):
            rows.append((key, bf16, cl, False, False))
            rows += [(key, bf16, cl, ck, True) for ck in (False, True)]
        return rows
    # CPU quick grid: every factor varied once on lite; B5 fp32 forward and forward+backward.
    return [("lite", False, False, False, False), ("lite", True, False, False, False),
            ("lite", False, True, False, False), ("lite", False, False, False, True),
            ("lite", False, False, True, True), ("lite", True, True, False, True),
            ("b5", False, False, False, False), ("b5", False, False, False, True),
            ("b5", False, False, True, True)]


def main(argv: list[str] | None = None) -> int:
    from mammoclip.models import create_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="whole grid on CPU too")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 1 on CPU, 2 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: 10 on CUDA; on CPU 3 for lite, 1 for B5)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "models.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch_size or (2 if device.type == "cuda" else 1)
    # CPU: a few repeats of the small model, one step of B5 at 1520x912 (tens of seconds each).
    cpu_repeats = {"lite": 3, "b5": 1}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    built: dict[str, torch.nn.Module] = {}
    results = []
    header = f"{'model':6} {'HxW':9} {'dtype':5} {'ch_last':7} {'ckpt':5} {'pass':8} {'s/img':>8} {'img/s':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for key, bf16, cl, ckpt, backward in grid(device, args.full):
        if key not in args.models:
            continue
        name, size = MODELS[key]
        if key not in built:
            text = SMALL_TEXT if name.endswith("-paper") else {}
            built[key] = create_model(name, pretrained=False, image_size=size, text=text).to(device)
        repeats = args.repeats or (10 if device.type == "cuda" else cpu_repeats[key])
        r = measure(built[key], size, batch, device, bf16, cl, ckpt, backward, repeats)
        row = {"model": name, "image_size": list(size), "batch": batch, "dtype": "bf16" if bf16 else "fp32",
               "channels_last": cl, "grad_checkpointing": ckpt, "pass": "fwd+bwd" if backward else "fwd",
               "repeats": repeats, **r}
        results.append(row)
        print(f"{key:6} {size[0]}x{size[1]:<4} {row['dtype']:5} {str(cl):7} {str(ckpt):5} {row['pass']:8} "
              f"{r['s_per_image']:8.3f} {r['images_per_s']:8.2f} {r['peak_mib']:9.0f}", flush=True)

    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "batch": batch,
           "load_avg_1min": os.getloadavg()[0]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
