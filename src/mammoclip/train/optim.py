"""Optimizer and learning-rate schedules, built outside the model (docs/architecture.md, design rule 5).

Fixes two quirks of the original (docs/original.md §10): its ``no_decay`` split never triggered, so
norms, biases and ``logit_scale`` were weight-decayed. Here no parameter with ``ndim < 2`` (biases,
norm scales/shifts, the scalar logit scale) and no name the model lists in ``no_weight_decay()`` is
decayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

#: Schedule name -> factory(warmup_steps, total_steps, min_ratio) -> multiplier(step).
_SCHEDULES: dict[str, Callable[[int, int, float], Callable[[int], float]]] = {}


def register_schedule(name: str) -> Callable:
    """Decorator registering a learning-rate multiplier factory under ``name``."""

    def wrap(fn: Callable[[int, int, float], Callable[[int], float]]) -> Callable:
        _SCHEDULES[name] = fn
        return fn

    return wrap


def list_schedules() -> list[str]:
    """Names accepted by :func:`build_scheduler`."""
    return sorted(_SCHEDULES)


@register_schedule("cosine")
def _cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up from 0, then a half cosine down to ``min_ratio`` (docs/original.md §5).

    The original's ``cos²(π/2·t)`` equals ``(1 + cos(π t)) / 2``, the half cosine used here.
    """

    def f(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@register_schedule("constant")
def _constant(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up, then a constant learning rate."""
    return lambda step: step / max(warmup, 1) if step < warmup else 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Args:
        model: Any module; if it has ``no_weight_decay() -> set[str]``, those names are not decayed.
        weight_decay: Decay of the decayed group.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (docs/original.md §5: lr 5e-5, wd 1e-4)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """A per-step scheduler (call ``step()`` after every optimizer step).

    Args:
        name: A name from :func:`list_schedules`.
        warmup_steps: Steps of linear warm-up from 0.
        total_steps: Total optimizer steps of the run.
        min_ratio: Final learning rate as a fraction of the peak.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {list_schedules()}")
    return LambdaLR(optimizer, _SCHEDULES[name](warmup_steps, total_steps, min_ratio))
