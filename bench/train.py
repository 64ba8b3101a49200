"""Training-step benchmark: does the data pipeline starve the model, and what does memory cost?

Measures, for one model / input size / batch:

* ``model_step``: images/s of forward + loss + backward + AdamW step on batches held in memory (no
  data loading at all): the same batches the loader yields, replayed;
* ``full_step``: images/s of the whole training step fed by the real pipeline: DataLoader with
  ``--workers`` processes over a synthetic cohort (PNG decode, resize, augmentation, tokenisation,
  uint -> float normalisation on the device);
* ``overhead`` = 1 - full/model (target: <= 10 %, the loader never starves the model);
* memory of one step, plain vs gradient checkpointing vs gradient caching: the allocator peak on
  GPU, the activation bytes saved for backward on CPU (see :func:`memory_variant`).

Presets::

    python bench/train.py                      # mammoclip-lite, 256x160, batch 8, CPU (the default)
    python bench/train.py --preset b5-gpu      # mammoclip-b5-paper, 1520x912, bf16, batch 4, CUDA

Writes a table to stdout and ``bench/out/train.json``. Numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PRESETS = {
    "lite-cpu": {"model": "mammoclip-lite", "size": [256, 160], "batch": 8, "precision": "fp32", "device": "cpu",
                 "micro": 2, "patients": 64},
    "b5-gpu": {"model": "mammoclip-b5-paper", "size": [1520, 912], "batch": 4, "precision": "bf16", "device": "cuda",
               "micro": 2, "patients": 32},
}


def _setup(args: argparse.Namespace, grad_ckpt: bool = False):
    from mammoclip.losses import create_loss
    from mammoclip.models import create_model, get_tokenizer
    from mammoclip.train.config import LoopConfig, OptimConfig
    from mammoclip.train.optim import build_optimizer
    from mammoclip.train.tasks import PretrainTask

    torch.manual_seed(0)
    model = create_model(args.model, pretrained=False, image_size=tuple(args.size))
    if grad_ckpt:
        model.set_grad_checkpointing(True)
    device = torch.device(args.device)
    model.to(device).train()
    task = PretrainTask(model, create_loss("mammoclip"))
    opt = build_optimizer(model, 1e-5, 1e-4)
    loop = LoopConfig(batch_size=args.batch, precision=args.precision, workers=args.workers, device=args.device)
    return task, opt, get_tokenizer(model), device, loop, OptimConfig()


def _dataset(args: argparse.Namespace, tokenizer):
    from mammoclip.data.datasets import ImageTextDataset, PairCollate
    from mammoclip.data.manifest import load_bundle
    from mammoclip.data.transforms import build_augmentation
    from mammoclip.synthetic import generate_cohort

    cohort = args.cohort
    if cohort is None:
        cohort = generate_cohort(Path(tempfile.mkdtemp(prefix="bench-cohort-")), args.patients, seed=0,
                                 image_size=tuple(args.size), progress=False)
    bundle = load_bundle(cohort)
    ds = ImageTextDataset(bundle, tuple(args.size), augment=build_augmentation(args.augment), seed=0)
    return ds, PairCollate(tokenizer)


def _step(task, opt, batch, autocast, micro: int | None):
    from mammoclip.train.gradcache import gradcache_backward

    opt.zero_grad(set_to_none=True)
    if micro:
        gradcache_backward(task.model, batch, micro, task.outputs, task.loss_from_outputs, autocast=autocast)
    else:
        with autocast():
            loss = task(batch)["loss"]
        loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args: argparse.Namespace) -> dict:
    from torch.utils.data import DataLoader

    from mammoclip.train.distributed import ResumableSampler
    from mammoclip.train.loop import _autocast

    task, opt, tok, device, loop, _ = _setup(args)
    autocast = _autocast(device, args.precision)
    ds, collate = _dataset(args, tok)
    n_items = len(ds)
    sampler = ResumableSampler(n_items, seed=0)

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=args.batch, sampler=sampler, collate_fn=collate, drop_last=True,
                                num_workers=args.workers, pin_memory=device.type == "cuda",
                                prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0)
            yield from loader
            epoch += 1

    # The model-alone pass replays the very batches the loader produces (same captions, token lengths
    # and shapes; the dataset and sampler are seeded), so the difference between the passes is the data
    # pipeline only. The batches are collected first and that loader is shut down, so no worker runs
    # during a model-alone pass; the model-alone pass runs before and after the loader-fed one (the
    # mean of the two), which spreads slow phases of a shared machine over both.
    total = args.warmup + args.rounds * args.steps
    if total * args.batch > n_items:
        # An epoch boundary inside the timed steps restarts the loader's workers and refills its
        # queue, a cost that a real epoch of hundreds of steps amortises: keep the timing in one epoch.
        print(f"warning: {total} batches of {args.batch} need {total * args.batch} breasts, the cohort has "
              f"{n_items}: the timing crosses an epoch boundary (use --patients)", file=sys.stderr)
    it = batches()
    replay = [task.prepare(next(it), device) for _ in range(total)]
    del it
    imgs = task.num_items(replay[0])
    for batch in replay[: args.warmup]:
        _step(task, opt, batch, autocast, None)

    def model_pass() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for batch in replay[args.warmup:]:
            _step(task, opt, batch, autocast, None)
        _sync(device)
        return time.perf_counter() - t0

    model_s = model_pass()
    it = batches()
    for _ in range(args.warmup):  # worker start-up and the first batches are not timed
        _step(task, opt, task.prepare(next(it), device), autocast, None)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(total - args.warmup):
        _step(task, opt, task.prepare(next(it), device), autocast, None)
    _sync(device)
    full_s = time.perf_counter() - t0
    model_s = (model_s + model_pass()) / 2
    n = (total - args.warmup) * imgs
    model_ips, full_ips = n / model_s, n / full_s

    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    loader_ips = args.steps * imgs / (time.perf_counter() - t0)
    return {"model_step_images_per_s": model_ips, "full_step_images_per_s": full_ips,
            "loader_only_images_per_s": loader_ips, "overhead": 1 - full_ips / model_ips,
            "images_per_step": imgs, "cohort_breasts": n_items, "rounds": args.rounds}


def memory_variant(args: argparse.Namespace, variant: str) -> dict:
    """Memory of one step of one variant.

    On CUDA: ``torch.cuda.max_memory_allocated``. On CPU there is no allocator peak to read (and the
    process RSS peak is set by model loading), so the measure is the activation memory: the bytes
    of distinct tensors saved for backward by one forward with a graph (the largest over the
    micro-batches under gradient caching), counted with ``saved_tensors_hooks``.
    """
    from mammoclip.train.loop import _autocast

    task, opt, tok, device, _, _ = _setup(args, grad_ckpt=variant in ("grad_checkpointing", "both"))
    autocast = _autocast(device, args.precision)
    ds, collate = _dataset(args, tok)
    batch = task.prepare(collate([ds[i] for i in range(args.batch)]), device)
    micro = args.micro if variant in ("grad_caching", "both") else None
    seen: dict[int, int] = {}
    peak = [0]
    outputs = task.outputs

    def counted_outputs(b):
        seen.clear()
        out = outputs(b)
        peak[0] = max(peak[0], sum(seen.values()))
        return out

    def pack(t: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or t.requires_grad:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    task.outputs = counted_outputs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(task, opt, batch, autocast, micro)
    _sync(device)
    secs = time.perf_counter() - t0
    out = {"variant": variant, "saved_activations_mib": peak[0] / 2**20, "step_s": secs}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None)
    p.add_argument("--micro", type=int, default=None, help="micro-batch of the gradient-caching variant")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="timed steps = rounds x steps")
    p.add_argument("--patients", type=int, default=None)
    p.add_argument("--cohort", default=None, help="existing manifest (default: generate a synthetic cohort)")
    p.add_argument("--augment", default="paper")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "train.json"))
    args = p.parse_args(argv)
    preset_name = args.preset or ("b5-gpu" if torch.cuda.is_available() else "lite-cpu")
    preset = PRESETS[preset_name]
    for key, pkey in (("model", "model"), ("size", "size"), ("batch", "batch"), ("precision", "precision"),
                      ("device", "device"), ("micro", "micro"), ("patients", "patients")):
        if getattr(args, key) is None:
            setattr(args, key, preset[pkey])
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --preset lite-cpu", file=sys.stderr)
        return 2

    result = {"preset": preset_name, "model": args.model, "size": args.size, "batch": args.batch,
              "precision": args.precision, "device": args.device, "workers": args.workers, "steps": args.steps,
              "torch_threads": torch.get_num_threads(), "machine": platform.node(), "cpus": os.cpu_count(),
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}
    if not args.skip_throughput:
        result.update(throughput(args))
    memory = []
    if not args.skip_memory:
        for variant in ("plain", "grad_checkpointing", "grad_caching", "both"):
            memory.append(memory_variant(args, variant))
            if args.device == "cuda":
                torch.cuda.empty_cache()
    result["memory"] = memory

    print(f"\n{args.model} {args.size[0]}x{args.size[1]} batch {args.batch} {args.precision} on {args.device} "
          f"(workers {args.workers}; shared machine: noisy)")
    print(f"{'measure':<28}{'value':>12}")
    if not args.skip_throughput:
        for k in ("model_step_images_per_s", "full_step_images_per_s", "loader_only_images_per_s"):
            print(f"{k:<28}{result[k]:>12.2f}")
        print(f"{'data pipeline overhead':<28}{100 * result['overhead']:>11.1f}%")
    if memory:
        key = "peak_gpu_mib" if args.device == "cuda" else "saved_activations_mib"
        print(f"\n{'memory variant':<22}{key:>16}{'step s':>10}")
        for m in memory:
            print(f"{m['variant']:<22}{m[key]:>16.0f}{m['step_s']:>10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
