"""The losses against a slow reference written from the formula of docs/original.md §4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammoclip.losses import ClipLoss, MammoClipLoss, create_loss, list_losses


def _ce_rows(queries: torch.Tensor, keys: torch.Tensor, s: float, eps: float = 0.0) -> float:
    """Mean over rows of -log softmax(s q_i . k_j)_i, one row at a time (label smoothing eps)."""
    total = 0.0
    n = keys.shape[0]
    for i in range(queries.shape[0]):
        logits = [s * float(queries[i] @ keys[j]) for j in range(n)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        nll = lse - logits[i]
        smooth = lse - sum(logits) / n
        total += (1 - eps) * nll + eps * smooth
    return total / queries.shape[0]


def _emb(b: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(4)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mammoclip_loss_matches_reference(smoothing: float) -> None:
    i1, i2, t1, t2 = _emb(6, 8, 0)
    s = 14.285
    out = MammoClipLoss(label_smoothing=smoothing)(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64))
    e = smoothing
    i2t = (_ce_rows(i1, t1, s, e) + _ce_rows(i2, t1, s, e) + _ce_rows(i1, t2, s, e) + _ce_rows(i2, t2, s, e)) / 4
    t2i = (_ce_rows(t1, i1, s, e) + _ce_rows(t1, i2, s, e) + _ce_rows(t2, i1, s, e) + _ce_rows(t2, i2, s, e)) / 4
    i2i = (_ce_rows(i1, i2, s) + _ce_rows(i2, i1, s)) / 2
    t2t = (_ce_rows(t2, t1, s) + _ce_rows(t1, t2, s)) / 2
    total = (i2t + t2i) / 2 + 1.0 * i2i + 0.5 * t2t
    assert out["i2t"].item() == pytest.approx(i2t, rel=1e-10)
    assert out["t2i"].item() == pytest.approx(t2i, rel=1e-10)
    assert out["i2i"].item() == pytest.approx(i2i, rel=1e-10)
    assert out["t2t"].item() == pytest.approx(t2t, rel=1e-10)
    assert out["loss"].item() == pytest.approx(total, rel=1e-10)


def test_clip_loss_matches_reference_and_weights() -> None:
    i1, _, t1, _ = _emb(5, 4, 1)
    s = 7.0
    out = ClipLoss(i2t_weight=0.75, t2i_weight=0.25)(i1, t1, torch.tensor(s, dtype=torch.float64))
    ref = 0.75 * _ce_rows(i1, t1, s) + 0.25 * _ce_rows(t1, i1, s)
    assert out["loss"].item() == pytest.approx(ref, rel=1e-10)


def test_perfect_alignment_gives_low_loss_and_gradient_flows_to_scale() -> None:
    x = F.normalize(torch.eye(4, 16), dim=-1)
    scale = torch.tensor(5.0, requires_grad=True)
    out = MammoClipLoss()(x, x, x, x, scale)
    assert out["loss"].item() < 0.1  # positives orthogonal to every negative
    out["loss"].backward()
    assert scale.grad is not None and scale.grad.item() < 0  # larger scale -> lower loss


def test_registry_and_input_keys() -> None:
    assert {"mammoclip", "clip"} <= set(list_losses())
    loss = create_loss("mammoclip", rank=1, world_size=2)
    assert loss.rank == 1 and loss.world_size == 2
    assert "image_view_embeddings" in loss.input_keys
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("nope")
    with pytest.raises(ValueError, match="rank"):
        MammoClipLoss(rank=2, world_size=2)
