"""Registry-driven contract tests: every registered model builds, runs forward + backward on CPU at
a small size, returns the documented keys and shapes, and has no NaNs (docs/architecture.md, design rule 9)."""

from __future__ import annotations

import math

import pytest
import torch

from mammoclip.constants import MAX_LOGIT_SCALE
from mammoclip.errors import ConfigError
from mammoclip.models import MammoCLIP, create_model, get_model_config, get_tokenizer, list_models
from tests.models.conftest import SMALL_PAPER_TEXT

SMALL = (96, 64)
#: The paper towers are 30M-parameter EfficientNets: test their contract at a tiny input.
PAPER_SMALL = (64, 64)
CONTRACT_KEYS = {"image_embeddings", "image_view_embeddings", "text_embeddings", "text_embeddings2", "logit_scale"}


def _build(name: str) -> MammoCLIP:
    if name.endswith("-paper"):
        return create_model(name, pretrained=False, image_size=PAPER_SMALL, text=SMALL_PAPER_TEXT)
    return create_model(name, pretrained=name != "mammoclip-tiny")


def _batch(model: MammoCLIP, b: int = 2, size: tuple[int, int] = SMALL) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.text_tower.encoder.config.vocab_size
    ids = torch.randint(1000, vocab, (b, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # a padded caption
    ids2 = torch.randint(1000, vocab, (b, 7), generator=g)
    return {
        "image": torch.randn(b, 1, *size, generator=g),
        "image_view2": torch.randn(b, 1, *size, generator=g),
        "input_ids": ids, "attention_mask": mask,
        "input_ids2": ids2, "attention_mask2": torch.ones_like(ids2),
    }


def test_registry_lists_the_four_models() -> None:
    assert {"mammoclip-tiny", "mammoclip-lite", "mammoclip-b5-paper", "mammoclip-b2-paper"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name: str) -> None:
    model = _build(name).train()
    size = model.preprocess_cfg.image_size if name.endswith("-paper") else SMALL
    batch = _batch(model, size=size)
    out = model(batch)
    assert CONTRACT_KEYS <= set(out)
    d = model.embed_dim
    for key in CONTRACT_KEYS - {"logit_scale"}:
        assert out[key].shape == (2, d), key
        assert torch.isfinite(out[key]).all(), key
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert out["image_features"].shape == (2, model.image_tower.num_features)
    assert out["logit_scale"].ndim == 0 and out["logit_scale"] <= MAX_LOGIT_SCALE
    loss = sum(out[k].sum() for k in CONTRACT_KEYS)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert model.image_projection.weight.grad.abs().sum() > 0
    assert model.text_projection.weight.grad.abs().sum() > 0
    fmap = model.image_feature_map(batch["image"])
    assert fmap.shape[:2] == (2, model.image_tower.num_features)
    assert fmap.shape[2:] == (math.ceil(size[0] / 32), math.ceil(size[1] / 32))


def test_tiny_forward_without_second_view_or_caption() -> None:
    model = create_model("mammoclip-tiny")
    batch = _batch(model)
    out = model({k: batch[k] for k in ("image", "input_ids", "attention_mask")})
    assert "image_view_embeddings" not in out and "text_embeddings2" not in out
    assert out["image_embeddings"].shape == out["text_embeddings"].shape == (2, 64)
    assert set(model({"image": batch["image"]})) == {"logit_scale", "image_features", "image_embeddings"}


def test_logit_scale_init_and_clamp() -> None:
    model = create_model("mammoclip-tiny")
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == MAX_LOGIT_SCALE


def test_eval_mode_is_deterministic_and_gray_equals_rgb() -> None:
    model = create_model("mammoclip-tiny").eval()
    x = torch.randn(2, 1, *SMALL)
    a = model.image_features(x)
    torch.testing.assert_close(a, model.image_features(x))
    torch.testing.assert_close(a, model.image_features(x.expand(-1, 3, -1, -1)))
    folded = create_model("mammoclip-tiny", image={"in_chans": 1}).eval()
    sd = model.state_dict()
    sd["image_tower.trunk.conv_stem.weight"] = sd["image_tower.trunk.conv_stem.weight"].sum(1, keepdim=True)
    folded.load_state_dict(sd)
    torch.testing.assert_close(folded.image_features(x), a, atol=1e-5, rtol=1e-4)


def test_encode_normalize_flag_and_tokenizer() -> None:
    model = create_model("mammoclip-tiny").eval()
    tok = get_tokenizer(model)
    enc = tok(["no mass", "a spiculated mass is seen in the upper outer quadrant"])
    assert enc["input_ids"].shape == enc["attention_mask"].shape
    assert enc["attention_mask"][0].sum() < enc["input_ids"].shape[1]  # dynamic padding, right side
    assert tok(["word " * 400])["input_ids"].shape[1] == 256
    raw = model.encode_text(**enc, normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), model.encode_text(**enc))
    x = torch.randn(1, 1, *SMALL)
    assert not torch.allclose(model.encode_image(x, normalize=False).norm(), torch.tensor(1.0))


def test_hooks() -> None:
    model = create_model("mammoclip-tiny")
    nwd = model.no_weight_decay()
    assert "logit_scale" in nwd and "image_projection.bias" in nwd and "image_projection.weight" not in nwd
    # Every trainable parameter gets a gradient (DistributedDataParallel needs no find_unused_parameters).
    model(_batch(model))["text_embeddings"].sum().backward()
    unused = [n for n, p in model.text_tower.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(_batch(model))
    out["image_embeddings"].sum().backward()
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    assert model.image_projection.weight.requires_grad
    model.train()
    assert not any(m.training for m in model.image_tower.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("mammoclip-nope")
    with pytest.raises(ConfigError, match="unknown text pooling"):
        create_model("mammoclip-tiny", text={"pooling": "max"})
    with pytest.raises(ConfigError, match="unknown model config keys"):
        create_model("mammoclip-tiny", colour="red")
    assert get_model_config("mammoclip-b5-paper")["image"]["dropout"] == 0.4
    assert get_model_config("mammoclip-b2-paper")["image"]["dropout"] == 0.3


def test_intermediate_feature_maps_for_fpn() -> None:
    model = create_model("mammoclip-tiny").eval()
    x = torch.randn(1, 1, *SMALL)
    maps = model.image_intermediates(x, indices=3)
    assert len(maps) == 3 and all(m.ndim == 4 for m in maps)
    assert [m.shape[-1] for m in maps] == sorted((m.shape[-1] for m in maps), reverse=True)  # coarser with depth


def test_partial_locking() -> None:
    model = create_model("mammoclip-tiny")
    model.lock_image_tower(unlocked_groups=1)
    trunk = model.image_tower.trunk
    assert not trunk.conv_stem.weight.requires_grad and not any(p.requires_grad for p in trunk.blocks[0].parameters())
    assert all(p.requires_grad for p in trunk.blocks[-1].parameters()) and trunk.conv_head.weight.requires_grad
    model.lock_text_tower(unlocked_layers=1)
    layers = model.text_tower.encoder.encoder.layer
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    frozen = create_model("mammoclip-tiny", text={"freeze_layers": 1}).text_tower.encoder
    assert not frozen.embeddings.word_embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in frozen.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in frozen.encoder.layer[1].parameters())


def test_locked_text_tower_is_deterministic_and_memoised() -> None:
    from mammoclip.models.text import TextFeatureCache

    torch.manual_seed(0)
    model = create_model("mammoclip-tiny")
    ids = torch.randint(5, 90, (4, 12))
    ids[2] = ids[0]  # a caption seen twice in one batch
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padded row
    model.eval()
    with torch.no_grad():
        expected = model.text_tower(ids, mask)  # (4, T)
    model.lock_text_tower()
    model.train()
    assert not model.text_tower.training and model.image_tower.training  # no dropout in the frozen tower
    cache = model.text_cache
    assert cache is not None
    first = model.text_features(ids, mask)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)  # = the batched, padded forward
    assert (cache.misses, cache.hits, len(cache)) == (3, 1, 3)
    # The same captions padded to another length hit the memo and give the same features.
    longer = torch.nn.functional.pad(ids, (0, 20))
    again = model.text_features(longer, torch.nn.functional.pad(mask, (0, 20)))
    assert cache.misses == 3 and cache.hits == 5
    torch.testing.assert_close(again, first)
    # A caption's features do not depend on the batch it first came in (bitwise): a fresh memo fed
    # the same caption alone, unpadded, gives exactly the same tensor.
    solo = TextFeatureCache()(model.text_tower, ids[1:2, :8], torch.ones_like(ids[1:2, :8]))
    assert torch.equal(solo[0], first[1])
    # The projection still learns from memoised features.
    model.encode_text(ids, mask).sum().backward()
    assert model.text_projection.weight.grad is not None and model.text_projection.weight.grad.abs().sum() > 0
    # New weights make the memo stale: it is emptied.
    model.load_state_dict(model.state_dict())
    assert len(cache) == 0
    # LRU bound.
    cache.max_items = 2
    model.text_features(ids, mask)
    assert len(cache) == 2
    # Partial unlocking trains the tower: no memo, dropout back on in train mode.
    model.lock_text_tower(unlocked_layers=1)
    model.train()
    assert model.text_cache is None and model.text_tower.training
