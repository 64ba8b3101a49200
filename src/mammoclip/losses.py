"""Contrastive losses of Mammo-CLIP, with explicit distributed arguments.

The Mammo-CLIP loss (docs/original.md §4, ``breastclip/loss/breast_clip.py``) treats all four
view x caption combinations of a breast as positives:

* i2t = mean of CE(s I1 T1allᵀ), CE(s I2 T1allᵀ), CE(s I1 T2allᵀ), CE(s I2 T2allᵀ)
* t2i = mean of CE(s T1 I1allᵀ), CE(s T1 I2allᵀ), CE(s T2 I1allᵀ), CE(s T2 I2allᵀ)
* i2i = ½[CE(s I1 I2allᵀ) + CE(s I2 I1allᵀ)]
* t2t = ½[CE(s T2 T1allᵀ) + CE(s T1 T2allᵀ)]
* total = (i2t + t2i)/2 + 1.0·i2i + 0.5·t2t

``X all`` is ``X`` gathered across ranks *with gradients*, rows are the local batch and the target of
local row ``i`` is ``i + rank·B``. Every rank's loss therefore covers the global batch, and the mean
of the rank losses equals the loss of one process holding the whole batch (DDP averages gradients,
and the gather's backward sums the column gradients back onto their owners).

The loss takes the model's forward dict by keyword (docs/architecture.md, "Layers": models and losses never import
each other; the dict is the contract). Reference: open_clip ``loss.py`` (``ClipLoss(rank, world_size)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mammoclip.constants import I2I_WEIGHT, T2T_WEIGHT

#: Loss name -> class; filled by :func:`register_loss`.
_LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a loss buildable by name through :func:`create_loss`."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _LOSSES[name] = cls
        return cls

    return wrap


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return sorted(_LOSSES)


def create_loss(name: str, **kwargs: object) -> nn.Module:
    """Build a registered loss.

    Example:
        >>> loss = create_loss("mammoclip", rank=0, world_size=1)
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {list_losses()}")
    return _LOSSES[name](**kwargs)


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All-gather ``x`` along dim 0 across ranks, keeping the autograd graph.

    ``torch.distributed.nn.functional.all_gather`` returns every rank's tensor as a differentiable
    output; its backward sums the gradients of each piece back onto the rank that owns it
    (reduce-scatter). Without a process group (or ``world_size == 1``) this is the identity.

    Args:
        x: ``(B, D)`` local tensor (same B on every rank).
        world_size: Number of ranks.

    Returns:
        ``(world_size * B, D)`` tensor, rank-major.
    """
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)  # (W*B, D)


def _ce(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class _GatherLoss(nn.Module):
    """Common machinery: explicit rank/world size, targets ``arange(B) + rank·B``."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank/world_size: {rank}/{world_size}")
        self.rank = rank
        self.world_size = world_size

    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return torch.arange(b, device=x.device) + self.rank * b  # (B,)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return gather_with_grad(x, self.world_size)


@register_loss("mammoclip")
class MammoClipLoss(_GatherLoss):
    """The Mammo-CLIP multi-view loss (docs/original.md §4), exactly.

    Args:
        i2i_weight: Weight of the image-image (view1 <-> view2) term.
        t2t_weight: Weight of the text-text (caption1 <-> caption2) term.
        label_smoothing: Applied to the i2t/t2i terms only (the original uses 0).
        rank: This process's rank.
        world_size: Number of ranks whose embeddings are gathered.
    """

    #: Keys of the model's forward dict that this loss reads.
    input_keys: tuple[str, ...] = (
        "image_embeddings",
        "image_view_embeddings",
        "text_embeddings",
        "text_embeddings2",
        "logit_scale",
    )

    def __init__(
        self,
        i2i_weight: float = I2I_WEIGHT,
        t2t_weight: float = T2T_WEIGHT,
        label_smoothing: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(rank, world_size)
        self.i2i_weight = i2i_weight
        self.t2t_weight = t2t_weight
        self.label_smoothing = label_smoothing

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_view_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        text_embeddings2: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss from L2-normalised ``(B, D)`` embeddings and ``s = exp(logit_scale)``.

        Returns:
            ``{"loss", "i2t", "t2i", "i2i", "t2t"}`` scalars.
        """
        i1, i2, t1, t2 = image_embeddings, image_view_embeddings, text_embeddings, text_embeddings2
        i1_all, i2_all = self._gather(i1), self._gather(i2)  # (W*B, D)
        t1_all, t2_all = self._gather(t1), self._gather(t2)
        y = self._targets(i1)
        s = logit_scale
        ls = self.label_smoothing
        i2t = (
            _ce(s * i1 @ t1_all.T, y, ls)
            + _ce(s * i2 @ t1_all.T, y, ls)
            + _ce(s * i1 @ t2_all.T, y, ls)
            + _ce(s * i2 @ t2_all.T, y, ls)
        ) / 4
        t2i = (
            _ce(s * t1 @ i1_all.T, y, ls)
            + _ce(s * t1 @ i2_all.T, y, ls)
            + _ce(s * t2 @ i1_all.T, y, ls)
            + _ce(s * t2 @ i2_all.T, y, ls)
        ) / 4
        i2i = (_ce(s * i1 @ i2_all.T, y) + _ce(s * i2 @ i1_all.T, y)) / 2
        t2t = (_ce(s * t2 @ t1_all.T, y) + _ce(s * t1 @ t2_all.T, y)) / 2
        loss = (i2t + t2i) / 2 + self.i2i_weight * i2i + self.t2t_weight * t2t
        return {"loss": loss, "i2t": i2t, "t2i": t2i, "i2i": i2i, "t2t": t2t}


@register_loss("clip")
class ClipLoss(_GatherLoss):
    """Plain CLIP loss on view 1 and caption 1: ``w_i2t·CE(s I Tallᵀ) + w_t2i·CE(s T Iallᵀ)``.

    The default weights (½, ½) give the symmetric CLIP loss; the original's single-image baseline
    (``breast_clip_contrastive.py``) used (0.75, 0.25).
    """

    input_keys: tuple[str, ...] = ("image_embeddings", "text_embeddings", "logit_scale")

    def __init__(
        self,
        i2t_weight: float = 0.5,
        t2i_weight: float = 0.5,
        label_smoothing: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(rank, world_size)
        self.i2t_weight = i2t_weight
        self.t2i_weight = t2i_weight
        self.label_smoothing = label_smoothing

    def forward(
        self,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss; returns ``{"loss", "i2t", "t2i"}``."""
        y = self._targets(image_embeddings)
        i2t = _ce(logit_scale * image_embeddings @ self._gather(text_embeddings).T, y, self.label_smoothing)
        t2i = _ce(logit_scale * text_embeddings @ self._gather(image_embeddings).T, y, self.label_smoothing)
        return {"loss": self.i2t_weight * i2t + self.t2i_weight * t2i, "i2t": i2t, "t2i": t2i}
