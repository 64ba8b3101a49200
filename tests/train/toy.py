"""A tiny CLIP-shaped model and paired dataset that honour the forward-dict contract of MammoCLIP.

They let the loop, the losses and gradient caching be tested in milliseconds, independently of the
real towers.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

SIDE = 4
VOCAB = 12


class ToyClip(nn.Module):
    """Image MLP + bag-of-tokens text encoder -> L2-normalised embeddings and exp(logit_scale)."""

    def __init__(self, dim: int = 8, dropout: float = 0.0, batchnorm: bool = False, nan_at_call: int | None = None):
        super().__init__()
        norm = nn.BatchNorm1d(16) if batchnorm else nn.LayerNorm(16)
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), norm, nn.GELU(), nn.Dropout(dropout),
                                   nn.Linear(16, dim))
        self.tokens = nn.Embedding(VOCAB, 16)
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.nan_at_call = nan_at_call
        self.calls = 0

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale"}

    def _text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.tokens(ids) * mask[..., None]  # (B, L, 16)
        return F.normalize(self.text(e.sum(1) / mask.sum(1, keepdim=True)), dim=-1)  # (B, D)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.calls += self.training
        out = {
            "image_embeddings": F.normalize(self.image(batch["image"]), dim=-1),
            "image_view_embeddings": F.normalize(self.image(batch["image_view2"]), dim=-1),
            "text_embeddings": self._text(batch["input_ids"], batch["attention_mask"]),
            "text_embeddings2": self._text(batch["input_ids2"], batch["attention_mask2"]),
            "logit_scale": self.logit_scale.exp().clamp(max=100),
        }
        if self.nan_at_call is not None and self.training and self.calls == self.nan_at_call:
            out["image_embeddings"] = out["image_embeddings"] * float("nan")
        return out


class ToyPairs(Dataset):
    """Item i belongs to class i % 3: its two uint8 views and two token captions depend on the class."""

    def __init__(self, n: int = 48, seed: int = 0, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)  # lets a test interrupt a run mid-epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
        c = i % 3
        base = torch.zeros(SIDE, SIDE)
        base[c] = 200.0
        views = [(base + 40 * torch.rand(SIDE, SIDE, generator=g)).to(torch.uint8)[None] for _ in range(2)]
        n1, n2 = 2 + i % 3, 1 + i % 4
        cap1 = torch.cat([torch.tensor([1 + c]), torch.randint(4, VOCAB, (n1,), generator=g)])
        cap2 = torch.cat([torch.tensor([1 + c]), torch.randint(4, VOCAB, (n2,), generator=g)])
        return {"image": views[0], "image_view2": views[1], "caption": cap1, "caption2": cap2}


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = s
        mask[j, : len(s)] = 1
    return ids, mask


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack views; pad captions to the longest in the batch."""
    ids, mask = _pad([it["caption"] for it in items])
    ids2, mask2 = _pad([it["caption2"] for it in items])
    return {
        "image": torch.stack([it["image"] for it in items]),
        "image_view2": torch.stack([it["image_view2"] for it in items]),
        "input_ids": ids, "attention_mask": mask, "input_ids2": ids2, "attention_mask2": mask2,
    }


def batch_of(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float batch of n items (already 'prepared')."""
    b = collate([ToyPairs(n, seed)[i] for i in range(n)])
    b["image"] = b["image"].float() / 255
    b["image_view2"] = b["image_view2"].float() / 255
    return b
