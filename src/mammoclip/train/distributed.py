"""One distributed code path, driven by the environment (docs/architecture.md, design rule 8).

``python -m mammoclip ...`` runs with world size 1; ``torchrun --nproc_per_node N -m mammoclip ...``
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and the same code runs
on N processes: NCCL when CUDA is used, gloo on CPU. Rank-0-only work sits behind
:func:`is_primary`. Reference: open_clip ``open_clip_train/distributed.py``, timm ``utils/distributed.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


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


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a detached copy; ``x`` itself is untouched)."""
    y = x.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        y /= dist.get_world_size()
    return y


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded index order that depends only on (seed, epoch) and can start mid-epoch.

    ``torch.utils.data.DistributedSampler`` cannot skip the batches an interrupted run already
    consumed; this one can (:meth:`set_position`), so ``--resume`` continues with exactly the batches
    the uninterrupted run would have seen. Like ``DistributedSampler(drop_last=True)``, every rank
    gets ``floor(N / world)`` indices.

    Args:
        length: Dataset size.
        shuffle: Permute per epoch (train) or keep order (validation).
        seed: Base seed; the epoch's permutation is ``randperm`` under ``seed + epoch``.
        rank: This rank.
        world_size: Number of ranks.
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.per_rank = length // world_size if shuffle else math.ceil(length / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch (and start it from the beginning)."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start: int) -> None:
        """Start ``epoch`` at its ``start``-th index on this rank (batches done x batch size)."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
            return order[self.rank : self.per_rank * self.world_size : self.world_size]
        # evaluation: every item exactly once across ranks (the last ranks may get one fewer).
        return list(range(self.rank, self.length, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)
