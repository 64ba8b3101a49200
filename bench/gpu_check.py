"""GPU machine check: one prepared script that says, in a few minutes, whether the paper's training runs here.

Five checks, each PASS / FAIL (or SKIP, with the reason) with its numbers:

* ``throughput``: forward + backward images/s of the image path (the cost that dominates) under the
  preset's precision (bf16 autocast on CUDA) at a few batch sizes; a batch that runs out of memory is
  reported as such, and the check fails only when none runs;
* ``memory_checkpointing``: peak memory of one full training step (both views, both captions, loss,
  AdamW step) without and with gradient checkpointing; passes when checkpointing lowers it (or makes a
  step fit that did not);
* ``gradcache_budget``: under a memory budget (24 GiB on CUDA, capped with
  ``torch.cuda.set_per_process_memory_fraction`` when the card is bigger), the largest gradient-caching
  micro-batch that fits (checkpointing on), then total contrastive batches with that micro-batch, and
  the total reachable by extrapolating the measured memory line (the inputs of the whole batch stay on
  the device, so memory still grows slowly with the total); passes when a micro-batch fits, the first
  total fits and memory grows with the total by no more than twice the inputs' bytes;
* ``gradcache_equality``: the gradient of gradient caching (micro-batches) against one plain pass over
  the same batch, fp32 (TF32 off), model in eval mode: dropout, drop-path and BatchNorm batch statistics
  are what legitimately differ between one pass and micro-batches (train/gradcache.py), the check is
  about the caching itself; the max abs difference over all parameters divided by the largest
  gradient, and the relative L2 difference, both against ``rtol`` (:func:`compare`);
* ``ddp_equality``: two DDP processes with batch B each against one process with batch 2B, plain and
  with gradient caching under DDP (NCCL on 2 GPUs; skipped with a line when the machine has fewer; gloo
  on CPU in the fallback).

Memory is ``torch.cuda.max_memory_allocated`` on CUDA (model, gradients, AdamW states, inputs,
activations). On CPU there is no allocator peak to read, so the measure is the one of bench/train.py:
the bytes of distinct tensors saved for backward by one forward with a graph (the largest over the
micro-batches), plus the bytes of the batch's inputs; the CPU budget is 3x the measure of a
micro-batch of one, so the search stops after a few candidates and every branch of it runs.

Usage::

    python bench/gpu_check.py                          # CUDA when available (full), else the CPU fallback
    python bench/gpu_check.py --device cuda [--quick]  # mammoclip-b5-paper at 1520x912, bf16
    python bench/gpu_check.py --device cpu --quick     # mammoclip-tiny at 128x80, 2 gloo processes (< 60 s)

Prints a table and writes ``bench/out/gpu_check.json`` (or ``--json PATH``); the exit code is 1 when a
check fails. Random weights throughout: nothing is downloaded. tests/test_gpu_check.py runs the CPU
fallback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

if TYPE_CHECKING:
    from mammoclip.models import MammoCLIP

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class CheckConfig:
    """What the checks run on; one per preset (:data:`PRESETS`)."""

    #: Registered model name (random weights).
    model: str
    #: Input (H, W) of the throughput, memory and budget checks.
    image_size: tuple[int, int]
    #: Precision of those checks: "bf16" (autocast) or "fp32". The equality checks always run fp32.
    precision: str
    #: Images per forward + backward in the throughput check.
    throughput_batches: tuple[int, ...]
    #: Timed steps per throughput batch (after one warm-up step).
    repeats: int
    #: Breasts (2 views + 2 captions each) per step in the checkpointing memory check.
    memory_batch: int
    #: Memory budget of the gradient-caching search in GiB; None: 3x the measure of a micro-batch of 1.
    budget_gib: float | None
    #: Micro-batches tried in increasing order (stops at the first that does not fit).
    micro_candidates: tuple[int, ...]
    #: Total contrastive batches tried with the largest micro-batch that fits.
    total_candidates: tuple[int, ...]
    #: Input (H, W) of the equality checks (the gradient's equality does not depend on the size).
    equal_size: tuple[int, int]
    #: Breasts per plain pass in the equality check (and per rank in the DDP check).
    equal_batch: int
    #: Micro-batch of gradient caching in the equality checks.
    equal_micro: int
    #: Tolerance of the equality checks: max abs difference / largest gradient, and relative L2 difference.
    rtol: float
    #: Tokens per caption (random ids; reports are trimmed to 256 at most).
    tokens: int = 64

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if sorted(self.micro_candidates) != list(self.micro_candidates) or not self.micro_candidates:
            raise ValueError(f"micro_candidates must be increasing and non-empty: {self.micro_candidates}")
        if self.equal_batch % self.equal_micro:
            raise ValueError(f"equal_batch {self.equal_batch} is not a multiple of equal_micro {self.equal_micro}")


PAPER = CheckConfig(model="mammoclip-b5-paper", image_size=(1520, 912), precision="bf16", throughput_batches=(2, 4, 8),
                    repeats=5, memory_batch=2, budget_gib=24.0, micro_candidates=(1, 2, 4, 8, 16, 32),
                    total_candidates=(32, 64, 128), equal_size=(512, 304), equal_batch=4, equal_micro=2, rtol=1e-3)
#: (device, quick) -> preset. The CPU presets run the same code on a small model and input.
PRESETS: dict[tuple[str, bool], CheckConfig] = {
    ("cuda", False): PAPER,
    ("cuda", True): dataclasses.replace(PAPER, throughput_batches=(2, 4), repeats=3,
                                        micro_candidates=(1, 2, 4, 8, 16), total_candidates=(16, 32)),
    ("cpu", False): CheckConfig(model="mammoclip-lite", image_size=(256, 160), precision="bf16",
                                throughput_batches=(2, 4), repeats=2, memory_batch=4, budget_gib=None,
                                micro_candidates=(1, 2, 4, 8), total_candidates=(8, 16), equal_size=(256, 160),
                                equal_batch=4, equal_micro=2, rtol=1e-4),
    ("cpu", True): CheckConfig(model="mammoclip-tiny", image_size=(128, 80), precision="bf16",
                               throughput_batches=(2, 4), repeats=2, memory_batch=4, budget_gib=None,
                               micro_candidates=(1, 2, 4, 8), total_candidates=(8, 16), equal_size=(128, 80),
                               equal_batch=4, equal_micro=2, rtol=1e-4, tokens=16),
}


# --- building blocks -------------------------------------------------------------------------------------
def build(cfg: CheckConfig, size: tuple[int, int], device: torch.device, seed: int = 0) -> MammoCLIP:
    """The preset's model with random weights (the same weights for the same seed, in every process)."""
    from mammoclip.models import create_model

    torch.manual_seed(seed)
    return create_model(cfg.model, pretrained=False, image_size=size).to(device)


def make_batch(n: int, size: tuple[int, int], tokens: int, vocab: int, device: torch.device,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` breasts: two normalised views and two captions of random token ids (same for the same seed)."""
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(n, 1, *size, generator=g), "image_view2": torch.randn(n, 1, *size, generator=g)}
    for suffix in ("", "2"):
        batch["input_ids" + suffix] = torch.randint(1000, vocab, (n, tokens), generator=g)
        batch["attention_mask" + suffix] = torch.ones(n, tokens, dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def vocab_size(cfg: CheckConfig) -> int:
    from mammoclip.models import get_model_config

    return int(get_model_config(cfg.model)["text"]["hf_config"]["vocab_size"])


def input_bytes(batch: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values())


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient on the CPU in float64 (zeros where none flowed, e.g. BERT's pooler)."""
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().cpu()
            for n, p in model.named_parameters()}


def compare(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far ``got`` is from ``ref``, relative to the gradient's scale.

    ``rel_diff`` (what the checks gate on) is the max abs difference over all parameters divided by
    the largest reference gradient; ``rel_l2`` is ``||got - ref|| / ||ref||`` over all parameters
    concatenated. A per-parameter relative difference would be noise over noise for parameters whose
    gradient is zero in exact arithmetic (an attention key bias: softmax ignores a constant added to
    every logit), so it is reported (``worst_param``) but not gated on.
    """
    max_abs, scale, diff_sq, ref_sq = 0.0, 0.0, 0.0, 0.0
    worst, worst_name = -1.0, ""
    for name, r in ref.items():
        d = got[name] - r
        diff = float(d.abs().max())
        max_abs, scale = max(max_abs, diff), max(scale, float(r.abs().max()))
        diff_sq += float((d * d).sum())
        ref_sq += float((r * r).sum())
        if diff > worst:
            worst, worst_name = diff, name
    return {"max_abs_diff": max_abs, "max_abs_grad": scale,
            "rel_diff": max_abs / scale if scale > 0 else math.inf,
            "rel_l2": math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else math.inf, "worst_param": worst_name}


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for the equality checks (TF32 matmuls differ from fp32 in the 3rd digit)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Step:
    """One training step of the pre-training task (plain or gradient-cached) with its memory measured."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        from mammoclip.losses import create_loss
        from mammoclip.train.optim import build_optimizer
        from mammoclip.train.tasks import PretrainTask

        self.device = device
        self.task = PretrainTask(model, create_loss("mammoclip"))
        self.opt = build_optimizer(model, 1e-7, 1e-4)
        self.autocast = autocast_for(device, precision)

    def run(self, batch: dict[str, torch.Tensor], micro: int | None) -> tuple[float, int]:
        """Loss and peak bytes of one step (see the module docstring for what the CPU measure is)."""
        from mammoclip.train.gradcache import gradcache_backward

        task, device = self.task, self.device
        seen: dict[int, int] = {}
        peak = [0]
        outputs = task.outputs

        def counted(b: Any) -> dict[str, torch.Tensor]:
            seen.clear()
            out = outputs(b)
            peak[0] = max(peak[0], sum(seen.values()))
            return out

        def pack(t: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() or t.requires_grad:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        hooks: contextlib.AbstractContextManager = contextlib.nullcontext()
        if device.type == "cuda":
            free(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            task.outputs = counted  # type: ignore[method-assign]
            hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        try:
            self.opt.zero_grad(set_to_none=True)
            with hooks:
                if micro:
                    loss = gradcache_backward(task.model, batch, micro, task.outputs, task.loss_from_outputs,
                                              autocast=self.autocast)["loss"]
                else:
                    with self.autocast():
                        loss = task(batch)["loss"]
                    loss.backward()
            self.opt.step()
            sync(device)
        finally:
            task.outputs = outputs  # type: ignore[method-assign]
            self.opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            return float(loss.detach()), int(torch.cuda.max_memory_allocated(device))
        return float(loss.detach()), peak[0] + input_bytes(batch)


# --- the checks ------------------------------------------------------------------------------------------
def check_throughput(cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Image path forward + backward images/s at each batch (as bench/models.py times it)."""
    model = build(cfg, cfg.image_size, device).train()
    autocast = autocast_for(device, cfg.precision)
    rows = []
    for b in cfg.throughput_batches:
        x = torch.randn(b, 1, *cfg.image_size, device=device)
        try:
            with autocast():
                model.encode_image(x).float().sum().backward()  # warm-up: allocator, cudnn autotune
            model.zero_grad(set_to_none=True)
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(cfg.repeats):
                with autocast():
                    model.encode_image(x).float().sum().backward()
                model.zero_grad(set_to_none=True)
            sync(device)
            ips = cfg.repeats * b / (time.perf_counter() - t0)
            row: dict[str, Any] = {"batch": b, "images_per_s": ips}
            if device.type == "cuda":
                row["peak_mib"] = torch.cuda.max_memory_allocated(device) / MiB
        except RuntimeError as err:
            if not is_oom(err):
                raise
            row = {"batch": b, "images_per_s": None, "oom": True}
        model.zero_grad(set_to_none=True)
        del x
        free(device)
        rows.append(row)
    ran = [r for r in rows if r["images_per_s"] is not None]
    ok = bool(ran) and all(math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0 for r in ran)
    text = ", ".join(f"b{r['batch']} " + ("OOM" if r.get("oom") else f"{r['images_per_s']:.2f}") for r in rows)
    return {"status": "PASS" if ok else "FAIL", "summary": f"{cfg.precision} fwd+bwd images/s: {text}",
            "precision": cfg.precision, "image_size": list(cfg.image_size), "rows": rows}


def _measure(step: Step, batch: dict[str, torch.Tensor], micro: int | None) -> dict[str, Any]:
    try:
        loss, peak = step.run(batch, micro)
    except RuntimeError as err:
        if not is_oom(err):
            raise
        oom = True
    else:
        oom = False
    if oom:  # outside the except block: the traceback's frames (and their tensors) are gone
        free(step.device)
        return {"ran": False, "oom": True, "peak_mib": None}
    return {"ran": True, "oom": False, "peak_mib": peak / MiB, "loss": loss, "finite": math.isfinite(loss)}


def warm_up(step: Step, model: MammoCLIP, cfg: CheckConfig, vocab: int, checkpointing: bool) -> None:
    """One step on one breast with checkpointing, before measuring: AdamW creates its states in the first
    step, after the activations are gone, so without this the first measured step would look smaller.
    ``checkpointing`` is the model's setting to leave behind."""
    model.set_grad_checkpointing(True)
    _measure(step, make_batch(1, cfg.image_size, cfg.tokens, vocab, step.device), None)
    model.set_grad_checkpointing(checkpointing)


def check_memory_checkpointing(cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Peak memory of one full step without and with gradient checkpointing."""
    model = build(cfg, cfg.image_size, device).train()
    step = Step(model, device, cfg.precision)
    vocab = vocab_size(cfg)
    warm_up(step, model, cfg, vocab, checkpointing=False)
    batch = make_batch(cfg.memory_batch, cfg.image_size, cfg.tokens, vocab, device)
    res = {}
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        res["checkpointing" if ckpt else "plain"] = _measure(step, batch, None)
    plain, ckpt_ = res["plain"], res["checkpointing"]
    finite = all(r.get("finite", True) for r in res.values())
    if ckpt_["ran"] and plain["ran"]:
        ok = finite and ckpt_["peak_mib"] < plain["peak_mib"]
        text = (f"batch {cfg.memory_batch} breasts: plain {plain['peak_mib']:.0f} MiB, checkpointing "
                f"{ckpt_['peak_mib']:.0f} MiB ({ckpt_['peak_mib'] / plain['peak_mib']:.2f}x)")
    else:
        ok = finite and ckpt_["ran"]
        ckpt_text = f"{ckpt_['peak_mib']:.0f} MiB" if ckpt_["ran"] else "OOM"
        text = (f"batch {cfg.memory_batch} breasts: plain {'ran' if plain['ran'] else 'OOM'}, "
                f"checkpointing {ckpt_text}")
    return {"status": "PASS" if ok else "FAIL", "summary": text, "batch": cfg.memory_batch, **res}


@contextlib.contextmanager
def memory_cap(device: torch.device, budget: int) -> Iterator[str]:
    """Cap this process's CUDA memory at ``budget`` bytes when the card has more; yields what was done."""
    if device.type != "cuda":
        yield f"CPU: budget {budget / MiB:.0f} MiB on the measure"
        return
    total = torch.cuda.get_device_properties(device).total_memory
    if total <= budget:
        yield f"card has {total / GiB:.1f} GiB <= the {budget / GiB:.0f} GiB budget: searched within the card"
        return
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
    try:
        yield f"card has {total / GiB:.1f} GiB: capped at {budget / GiB:.0f} GiB (set_per_process_memory_fraction)"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def check_gradcache_budget(cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Largest micro-batch, and total contrastive batch, that fit the budget (checkpointing on)."""
    model = build(cfg, cfg.image_size, device).train()
    model.set_grad_checkpointing(True)
    step = Step(model, device, cfg.precision)
    vocab = vocab_size(cfg)
    per_breast = input_bytes(make_batch(1, cfg.image_size, cfg.tokens, vocab, torch.device("cpu")))
    warm_up(step, model, cfg, vocab, checkpointing=True)
    if cfg.budget_gib is not None:
        budget = int(cfg.budget_gib * GiB)
    else:  # the CPU fallback: a budget the search crosses after a few candidates
        probe = _measure(step, make_batch(2, cfg.image_size, cfg.tokens, vocab, device), 1)
        budget = int(3 * probe["peak_mib"] * MiB)

    def fits(r: dict[str, Any]) -> bool:
        r["fits"] = bool(r["ran"] and r["peak_mib"] * MiB <= budget)
        return r["fits"]

    micro_rows, totals = [], []
    best: int | None = None
    with memory_cap(device, budget) as cap:
        for m in cfg.micro_candidates:
            r = {"micro": m, "total": 2 * m,
                 **_measure(step, make_batch(2 * m, cfg.image_size, cfg.tokens, vocab, device), m)}
            micro_rows.append(r)
            free(device)
            if not fits(r):
                break
            best = m
        if best is not None:
            for n in cfg.total_candidates:
                r = {"micro": best, "total": n,
                     **_measure(step, make_batch(n, cfg.image_size, cfg.tokens, vocab, device), best)}
                totals.append(r)
                free(device)
                if not fits(r):
                    break
    ok_totals = [t for t in totals if fits(t)]
    finite = all(r.get("finite", True) for r in micro_rows + totals)
    out: dict[str, Any] = {"budget_mib": budget / MiB, "cap": cap, "input_mib_per_breast": per_breast / MiB,
                           "micro_rows": micro_rows, "total_rows": totals, "largest_micro": best,
                           "largest_total_measured": ok_totals[-1]["total"] if ok_totals else None}
    growth_ok = True
    if len(ok_totals) >= 2:
        a, b = ok_totals[0], ok_totals[-1]
        slope = (b["peak_mib"] - a["peak_mib"]) * MiB / (b["total"] - a["total"])  # bytes per breast
        out["bytes_per_extra_breast"] = slope
        growth_ok = slope <= 2 * per_breast + 64 * 1024
        if slope > 0:
            out["largest_total_extrapolated"] = int(b["total"] + (budget - b["peak_mib"] * MiB) / slope)
    ok = best is not None and bool(ok_totals) and ok_totals[0]["total"] == cfg.total_candidates[0] and growth_ok
    ok = ok and finite
    text = (f"budget {budget / MiB:.0f} MiB: micro {best}, total {out['largest_total_measured']} measured"
            + (f", ~{out['largest_total_extrapolated']} extrapolated" if "largest_total_extrapolated" in out else "")
            + (f", +{out['bytes_per_extra_breast'] / MiB:.2f} MiB/breast (inputs "
               f"{per_breast / MiB:.2f})" if "bytes_per_extra_breast" in out else ""))
    return {"status": "PASS" if ok else "FAIL", "summary": text, **out}


def _plain_and_cached(cfg: CheckConfig, device: torch.device, batch: dict[str, torch.Tensor],
                      model: torch.nn.Module, wrapped: torch.nn.Module, rank: int = 0,
                      world: int = 1) -> dict[str, Any]:
    """Loss and gradients of one plain pass and of gradient caching on ``batch`` (fp32, eval mode)."""
    from mammoclip.losses import create_loss
    from mammoclip.train.gradcache import gradcache_backward
    from mammoclip.train.tasks import PretrainTask

    task = PretrainTask(wrapped, create_loss("mammoclip", rank=rank, world_size=world))
    model.zero_grad(set_to_none=True)
    loss = task(batch)["loss"]
    loss.backward()
    plain = grads(model)
    model.zero_grad(set_to_none=True)
    cached = gradcache_backward(wrapped, batch, cfg.equal_micro, task.outputs, task.loss_from_outputs)["loss"]
    out = {"loss": float(loss.detach()), "grads": plain, "gc_loss": float(cached), "gc_grads": grads(model)}
    model.zero_grad(set_to_none=True)
    return out


def check_gradcache_equality(cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Gradient caching's gradient equals one plain pass's (fp32, eval mode: see the module docstring)."""
    with exact_fp32():
        model = build(cfg, cfg.equal_size, device).eval()
        batch = make_batch(cfg.equal_batch, cfg.equal_size, cfg.tokens, vocab_size(cfg), device, seed=1)
        r = _plain_and_cached(cfg, device, batch, model, model)
    cmp = compare(r["gc_grads"], r["grads"])
    loss_diff = abs(r["gc_loss"] - r["loss"])
    nonzero = sum(float(g.abs().max()) > 0 for g in r["grads"].values())
    ok = (cmp["rel_diff"] <= cfg.rtol and cmp["rel_l2"] <= cfg.rtol and loss_diff <= cfg.rtol * abs(r["loss"])
          and math.isfinite(r["loss"]) and nonzero > len(r["grads"]) // 2)
    text = (f"batch {cfg.equal_batch} in micro {cfg.equal_micro}: max abs diff {cmp['max_abs_diff']:.2e}, "
            f"/ max grad {cmp['rel_diff']:.2e}, rel L2 {cmp['rel_l2']:.2e} (rtol {cfg.rtol:g}), "
            f"loss diff {loss_diff:.2e}")
    return {"status": "PASS" if ok else "FAIL", "summary": text, "loss": r["loss"], "gc_loss": r["gc_loss"],
            "loss_diff": loss_diff, "rtol": cfg.rtol, "params_with_gradient": nonzero,
            "params": len(r["grads"]), **cmp}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out: str, cfg: CheckConfig, device_type: str) -> None:
    """One DDP rank: its slice of the 2B batch, plain and gradient-cached; results saved to ``out.rank``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        with exact_fp32():
            model = build(cfg, cfg.equal_size, device).eval()
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rank] if device.type == "cuda" else None, find_unused_parameters=True)
            full = make_batch(cfg.equal_batch * world, cfg.equal_size, cfg.tokens, vocab_size(cfg), device, seed=2)
            local = {k: v[rank * cfg.equal_batch : (rank + 1) * cfg.equal_batch] for k, v in full.items()}
            r = _plain_and_cached(cfg, device, local, model, ddp, rank, world)
        torch.save(r, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def check_ddp_equality(cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Two DDP ranks with batch B equal one process with 2B (plain and gradient-cached)."""
    import torch.multiprocessing as mp

    world = 2
    if device.type == "cuda" and torch.cuda.device_count() < world:
        return {"status": "SKIP", "summary": f"needs {world} GPUs, this machine has {torch.cuda.device_count()}: "
                f"the 2-process DDP step was not checked (the CPU fallback checks it with gloo)"}
    with exact_fp32():
        model = build(cfg, cfg.equal_size, device).eval()
        full = make_batch(cfg.equal_batch * world, cfg.equal_size, cfg.tokens, vocab_size(cfg), device, seed=2)
        ref = _plain_and_cached(cfg, device, full, model, model)
    del model, full
    free(device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        out = str(Path(tmp) / "rank")
        # fork on CPU: the ranks inherit the imported modules (seconds on a 2-core machine); CUDA needs spawn.
        mp.start_processes(_ddp_worker, args=(world, _free_port(), out, cfg, device.type), nprocs=world, join=True,
                           start_method="fork" if device.type == "cpu" else "spawn")
        ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    rows, worst = [], 0.0
    for rank, res in enumerate(ranks):
        for kind in ("grads", "gc_grads"):
            cmp = compare(res[kind], ref["grads"])
            rows.append({"rank": rank, "kind": "plain" if kind == "grads" else "gradcache", **cmp})
            worst = max(worst, cmp["rel_diff"], cmp["rel_l2"])
    # each rank's loss is its own rows' mean; the mean over ranks is the 1-process loss.
    loss_mean = sum(r["loss"] for r in ranks) / world
    gc_mean = sum(r["gc_loss"] for r in ranks) / world
    loss_diff = max(abs(loss_mean - ref["loss"]), abs(gc_mean - ref["loss"]))
    ok = worst <= cfg.rtol and loss_diff <= cfg.rtol * abs(ref["loss"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    text = (f"{world} {backend} ranks x batch {cfg.equal_batch} vs 1 x {world * cfg.equal_batch}, plain and "
            f"gradcache: worst rel diff {worst:.2e} (rtol {cfg.rtol:g}), loss diff {loss_diff:.2e}")
    return {"status": "PASS" if ok else "FAIL", "summary": text, "backend": backend, "world": world,
            "worst_rel_diff": worst, "loss_diff": loss_diff, "rows": rows, "rtol": cfg.rtol}


#: Name -> check, in the order they run and print.
CHECKS: dict[str, Callable[[CheckConfig, torch.device], dict[str, Any]]] = {
    "throughput": check_throughput,
    "memory_checkpointing": check_memory_checkpointing,
    "gradcache_budget": check_gradcache_budget,
    "gradcache_equality": check_gradcache_equality,
    "ddp_equality": check_ddp_equality,
}


def run_checks(cfg: CheckConfig, device: torch.device, names: list[str]) -> list[dict[str, Any]]:
    """Run the named checks; an exception is that check's FAIL (with its one line), not the end of the run."""
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](cfg, device)
        except Exception as err:  # noqa: BLE001 - reported as the check's FAIL, traceback on stderr
            traceback.print_exc()
            res = {"status": "FAIL", "summary": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        free(device)
        res = {"check": name, **res, "seconds": time.perf_counter() - t0}
        print(f"{name:<22} {res['status']:<5} {res['seconds']:6.1f}s  {res['summary']}", flush=True)
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps (the CPU fallback's CI run)")
    parser.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "out" / "gpu_check.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; run the CPU fallback: python bench/gpu_check.py --device cpu --quick",
              file=sys.stderr)
        return 2
    cfg = PRESETS[(args.device, args.quick)]
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = {"device": args.device, "quick": args.quick, "torch": torch.__version__, "machine": platform.node(),
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "gpus": torch.cuda.device_count() if device.type == "cuda" else 0}
    print(f"{cfg.model} {cfg.image_size[0]}x{cfg.image_size[1]} {cfg.precision} on {env['gpu'] or 'cpu'}"
          f"{' (quick)' if args.quick else ''}\n{'check':<22} {'':<5} {'time':>7}  numbers")
    t0 = time.perf_counter()
    checks = run_checks(cfg, device, args.checks)
    passed = all(c["status"] != "FAIL" for c in checks)
    result = {"env": env, "config": dataclasses.asdict(cfg), "checks": checks, "passed": passed,
              "seconds": time.perf_counter() - t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    failed = [c["check"] for c in checks if c["status"] == "FAIL"]
    print(f"{'all checks passed' if passed else 'FAILED: ' + ', '.join(failed)} in {result['seconds']:.0f} s; "
          f"wrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
