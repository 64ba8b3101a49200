"""Text tower with the real all-MiniLM-L6-v2 weights (package-shipped, offline) and the poolers."""

from __future__ import annotations

import torch

from mammoclip.models import create_model, get_tokenizer
from mammoclip.models.text import cls_pool, eos_pool, mean_pool


def test_poolers_pick_the_right_tokens() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (B, L, D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(eos_pool(hidden, mask), torch.stack([hidden[0, 2], hidden[1, 3]]))
    torch.testing.assert_close(cls_pool(hidden, mask), hidden[:, 0])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.stack([hidden[0, :3].mean(0), hidden[1].mean(0)]))


def test_minilm_similar_reports_are_closer() -> None:
    model = create_model("mammoclip-lite", pretrained=True).eval()
    tok = get_tokenizer(model)
    sentences = [
        "there is a spiculated mass in the upper outer quadrant of the left breast",
        "an irregular spiculated mass is seen in the left breast upper outer quadrant",
        "the weather was sunny and the football match ended in a draw",
        "the breasts are heterogeneously dense which may obscure small masses",
        "heterogeneously dense breast tissue, which could obscure small masses",
    ]
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.text_features(**tok(sentences)), dim=-1)  # (5, 384)
    sim = feats @ feats.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > sim[3, 2] + 0.3
    assert sim[0, 1] > sim[0, 3] and sim[3, 4] > sim[3, 0]
