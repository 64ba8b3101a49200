"""Gradient caching: a large contrastive batch on small memory (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", arXiv:2101.06983).

Why not plain gradient accumulation: a contrastive loss couples every item of the batch (each row's
softmax runs over all the other items). Accumulating k micro-batches of size m computes k losses
with m-1 negatives each, a *different objective* from one loss with k·m - 1 negatives. Gradient
caching computes the exact large-batch gradient:

1. forward every micro-batch without a graph and keep only the embeddings (cheap to store);
2. compute the loss on the full batch of embeddings and back-propagate to the embeddings only;
3. forward every micro-batch again *with* a graph and back-propagate the cached embedding
   gradients through it (``torch.autograd.backward(outputs, grads)``).

The second forward must match the first: the RNG state (dropout, stochastic depth) is recorded
before each first-pass micro-batch and replayed, and the buffers (BatchNorm running statistics) are
restored after the first pass so that they are updated once per micro-batch, as without caching.
BatchNorm still normalises with micro-batch statistics, so models with BatchNorm in train mode are
exact only up to that (the same holds for any micro-batching); everything else is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn


def split_batch(batch: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut every tensor with a leading batch dimension into chunks of ``size`` rows.

    Non-tensor values and 0-d tensors are shared by all chunks.
    """
    n = batch_length(batch)
    chunks = []
    for start in range(0, n, size):
        chunk = {}
        for k, v in batch.items():
            is_rows = isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n
            chunk[k] = v[start : start + size] if is_rows else v
        chunks.append(chunk)
    return chunks


def batch_length(batch: Mapping[str, Any]) -> int:
    """The leading dimension of the first tensor with one."""
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    raise ValueError("batch holds no tensor with a batch dimension")


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def _cat_outputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-chunk outputs into leaves that collect the loss's gradient."""
    out = {}
    for k, v in parts[0].items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            continue
        full = v if v.ndim == 0 else torch.cat([p[k] for p in parts], dim=0)  # (B, ...) or ()
        out[k] = full.detach().float().requires_grad_(True)
    return out


def gradcache_backward(
    model: nn.Module,
    batch: Mapping[str, Any],
    micro_batch: int,
    outputs_fn: Callable[[Mapping[str, Any]], dict[str, torch.Tensor]],
    loss_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> dict[str, torch.Tensor]:
    """Accumulate into ``.grad`` the exact gradient of ``loss_fn(outputs_fn(batch))["loss"]``.

    Args:
        model: The module whose parameters receive gradients (a DDP wrapper is fine: all but the
            last micro-batch run under ``no_sync()``).
        batch: The full (local) batch.
        micro_batch: Rows per forward with a graph.
        outputs_fn: ``batch -> {name: tensor}`` (e.g. the model's embeddings), the part that needs memory.
        loss_fn: ``outputs -> {"loss", ...}`` on the full batch (may all-gather across ranks).
        autocast: Context factory for the forwards (AMP).
        scale: Applied to the loss before the backward (``GradScaler.scale``).

    Returns:
        The loss dict, detached.
    """
    chunks = split_batch(batch, micro_batch)
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    states, parts = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            with autocast():
                parts.append(outputs_fn(chunk))
    after = _rng_state()
    for k, b in model.named_buffers():
        b.copy_(buffers[k])

    leaves = _cat_outputs(parts)
    losses = loss_fn(leaves)
    scale(losses["loss"]).backward()

    offset = 0
    for i, chunk in enumerate(chunks):
        n = batch_length(chunk)
        _set_rng_state(states[i])
        sync = i == len(chunks) - 1
        with _maybe_no_sync(model, sync), autocast():
            out = outputs_fn(chunk)
        tensors, grads = [], []
        for k, leaf in leaves.items():
            if leaf.grad is None:
                continue
            if leaf.ndim == 0:
                # a shared scalar (logit scale): its gradient flows once, through the last chunk.
                if not sync:
                    continue
                g = leaf.grad
            else:
                g = leaf.grad[offset : offset + n]
            tensors.append(out[k])
            grads.append(g.to(out[k].dtype))
        with _maybe_no_sync(model, sync):
            torch.autograd.backward(tensors, grads)
        offset += n
    _set_rng_state(after)
    return {k: v.detach() for k, v in losses.items()}


@contextlib.contextmanager
def _maybe_no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    if sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield
