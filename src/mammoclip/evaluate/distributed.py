"""One distributed code path for 1..N processes, driven by the environment (docs/architecture.md, rule 8).

``python -m mammoclip ...`` runs with world size 1; ``torchrun --nproc_per_node N -m mammoclip ...``
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and the same code runs
on N processes: NCCL when CUDA is used, gloo on CPU. Rank-0-only work sits behind
:func:`is_primary`. Reference: open_clip ``open_clip_train/distributed.py``, timm ``utils/distributed.py``.

The process-placement helpers live here, below ``train``, because inference (``embed``, ``zeroshot``,
``retrieval``, the features behind ``probe``) runs under torchrun too and may not import the trainer;
:mod:`mammoclip.train.distributed` re-exports them. The inference helpers split N rows into one
contiguous share per rank (:func:`shard_range`) and put every rank's rows back together in row order
(:func:`gather_rows`), checking that each row came back exactly once, so the merged arrays equal what
one process computes and the metrics are computed once, on the merged table. They share rows out only
inside :func:`inference_job`, which the commands enter; elsewhere every call computes all its rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mammoclip.errors import MammoclipError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    #: Global rank.
    rank: int = 0
    #: Number of processes.
    world_size: int = 1
    #: Rank on this machine (picks the GPU).
    local_rank: int = 0
    #: The device this process computes on.
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` when absent)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; a no-op for a single process.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.

    Returns:
        The :class:`DistInfo` of this process (the process group is initialised when world > 1).
    """
    rank, world, local = env_world()
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def inference_device(requested: str | None = None) -> torch.device:
    """The device an inference command computes on, joining the torchrun job first when there is one.

    A single process keeps the device it was asked for (``--device cuda:1`` stays ``cuda:1``); under
    torchrun each process takes ``cuda:LOCAL_RANK`` (or the CPU when CUDA is absent or ``cpu`` was
    asked for), so N processes on one machine never share a GPU.

    Args:
        requested: ``--device`` (``None``: CUDA when available, else the CPU).
    """
    info = init_distributed(requested.split(":")[0] if requested else "auto")
    if requested and not info.distributed:
        return torch.device(requested)
    return info.device


def current() -> DistInfo:
    """The :class:`DistInfo` of an already-initialised process (CPU device; world 1 if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    return DistInfo()


def is_primary() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and logs."""
    return current().is_primary


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- inference ---
# Inference shares rows out only inside an `inference_job` (what the commands enter): a library call made
# by one rank alone (the trainer's rank-0 epoch-end zero-shot) must not wait for ranks that never come.

_JOB: ContextVar[bool] = ContextVar("mammoclip_inference_job", default=False)


@contextmanager
def inference_job(device: str | None = None) -> Iterator[torch.device]:
    """Run inference as one job over every torchrun process (a single process outside torchrun).

    Joins the torchrun job (:func:`inference_device`), and inside the block ``embed``,
    ``zeroshot``, ``retrieval`` and the features behind ``probe`` share their rows out across the
    processes, merge them in row order and leave metrics and files to rank 0. On leaving, every rank
    waits for the others and the process group is closed.

    Args:
        device: ``--device`` (``None``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).

    Yields:
        The device this process computes on.
    """
    dev = inference_device(device)
    token = _JOB.set(True)
    try:
        yield dev
        barrier()
    finally:
        _JOB.reset(token)
        cleanup()


def job() -> DistInfo:
    """This process's place in the inference job: the torchrun world inside :func:`inference_job`,
    rank 0 of 1 outside it (every call computes all rows itself)."""
    return current() if _JOB.get() else DistInfo()


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous rows ``[start, stop)`` of ``rank``: sizes differ by at most one, none overlap.

    Contiguous (not strided) shares keep each rank's rows in manifest order, so the merge is a
    concatenation in rank order; when ``n`` does not divide evenly the last ``n % world_size`` ranks
    get one row more, and a rank may get none (``n < world_size``).
    """
    start = rank * n // world_size
    return range(start, (rank + 1) * n // world_size)


def gather_rows(n: int, indices: np.ndarray, arrays: dict[str, np.ndarray], *, what: str = "rows") -> dict[str, np.ndarray]:
    """Every rank's ``(len(indices), ...)`` arrays merged into ``(n, ...)`` arrays, on every rank.

    Outside a distributed :func:`inference_job` this places the process's own arrays by ``indices``.
    Inside one the shares travel with ``all_gather_object`` (gloo and NCCL alike).

    Args:
        n: Rows of the whole table.
        indices: ``(M,)`` row numbers of this rank's arrays.
        arrays: ``name -> (M, ...)`` this rank's rows.
        what: What the rows are, for the error message.

    Raises:
        MammoclipError: when a row came back twice or not at all (a sharding bug, never silent).
    """
    shares: list[Any] = [(indices, arrays)]
    if job().distributed:
        shares = [None] * job().world_size
        dist.all_gather_object(shares, (indices, arrays))
    seen = np.zeros(n, np.int64)
    out: dict[str, np.ndarray] = {}
    for idx, part in shares:
        np.add.at(seen, idx, 1)  # not `seen[idx] += 1`, which counts a repeated index once
        for name, value in part.items():
            if name not in out:
                out[name] = np.zeros((n, *value.shape[1:]), value.dtype)
            out[name][idx] = value
    if n and not (seen == 1).all():
        dup, gap = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
        raise MammoclipError(f"merging {what} across {len(shares)} processes: rows {dup[:5].tolist()} came back "
                             f"more than once and rows {gap[:5].tolist()} never; each row must belong to one rank")
    return out


def sharded(n: int, compute: Callable[[range], dict[str, np.ndarray]], *, what: str = "rows") -> dict[str, np.ndarray]:
    """``compute`` on this rank's share of ``n`` rows, merged across ranks in row order.

    Args:
        n: Rows of the whole table.
        compute: ``rows -> name -> (len(rows), ...)`` arrays for those rows (not called for a rank
            without rows).
        what: What the rows are, for the error message.
    """
    info = job()
    rows = shard_range(n, info.rank, info.world_size)
    return gather_rows(n, np.arange(rows.start, rows.stop), compute(rows) if len(rows) else {}, what=what)


def on_primary(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only, its result sent to every rank (just ``compute()`` outside a job).

    Metrics (bootstrap CIs, probe fits) and output files are made once, on the merged table, and every
    rank returns the same value as one process would.
    """
    if not job().distributed:
        return compute()
    box: list[Any] = [compute() if job().is_primary else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def job_barrier() -> None:
    """Wait for every rank of a distributed :func:`inference_job` (a no-op outside one)."""
    if job().distributed:
        dist.barrier()


#: Seed of the weights a model is built with when they do not come from a file.
BUILD_SEED = 0


def seeded(build: Callable[[], T], seed: int = BUILD_SEED) -> T:
    """``build()`` under a fixed torch seed, the caller's random state left as it was.

    A registry model without pretrained weights (or the ``random`` probe baseline) is built from
    torch's random generator; under torchrun every process must build the same weights, or each rank
    would embed its share of the rows with a different model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
