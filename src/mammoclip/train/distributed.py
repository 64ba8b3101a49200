"""One distributed code path, driven by the environment (docs/architecture.md, design rule 8).

``python -m mammoclip ...`` runs with world size 1; ``torchrun --nproc_per_node N -m mammoclip ...``
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and the same code runs
on N processes: NCCL when CUDA is used, gloo on CPU. Rank-0-only work sits behind
:func:`is_primary`. Reference: open_clip ``open_clip_train/distributed.py``, timm ``utils/distributed.py``.

Process placement (:class:`DistInfo`, :func:`init_distributed`, :func:`is_primary`, ...) lives in
:mod:`mammoclip.evaluate.distributed`, where inference can use it without importing the trainer, and
is re-exported here; this module adds what only training needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mammoclip.evaluate.distributed import (  # noqa: F401 - re-exported: the trainer's one import
    DistInfo,
    barrier,
    cleanup,
    current,
    env_world,
    init_distributed,
    is_primary,
)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a detached copy; ``x`` itself is untouched)."""
    y = x.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        y /= dist.get_world_size()
    return y


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
