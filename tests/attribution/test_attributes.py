"""Attributes: built-in prompts, user sentences, the no-prompt error, embeddings and their per-checkpoint cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mammoclip.attribution import AttributeSpec, attribute_embeddings, read_sentence_file, resolve_attributes
from mammoclip.attribution.attributes import builtin_attribute, text_fingerprint
from mammoclip.errors import ConfigError, DataError


def test_builtin_attributes_come_from_the_prompt_data() -> None:
    mass, calc = resolve_attributes(["mass", "suspicious_calcification"])
    assert (mass.name, mass.label_column) == ("mass", "mass")
    assert (calc.name, calc.label_column) == ("calcification", "calcification")
    assert "there is a suspicious mass" in mass.sentences and "no mass" not in mass.sentences
    assert any("calcifications" in s for s in calc.sentences)
    assert builtin_attribute("density") is None  # four classes: not a present/absent attribute


def test_user_sentences_and_new_attributes(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"mass": ["a dense lump"],
                                "spiculated mass": {"label": "mass", "sentences": ["spiculated mass"]}}))
    extra = read_sentence_file(path)
    mass, spic = resolve_attributes(["mass", "spiculated mass"], extra)
    assert mass.sentences[-1] == "a dense lump" and len(mass.sentences) > 1
    assert spic == AttributeSpec("spiculated mass", "mass", ("spiculated mass",))


def test_attribute_without_prompts_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'lump' has no prompts"):
        resolve_attributes(["lump"])
    with pytest.raises(ConfigError, match="has no prompts"):
        AttributeSpec("lump", "mass", ())
    with pytest.raises(ConfigError, match="label column"):
        resolve_attributes(["lump"], {"lump": {"label": None, "sentences": ["a lump"]}})
    with pytest.raises(ConfigError, match="given twice"):
        resolve_attributes(["mass", "masses"])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json"):
        read_sentence_file(tmp_path / "bad.json")


def test_embeddings_are_normalised_means_and_cached_per_checkpoint(tmp_path: Path) -> None:
    from mammoclip.evaluate.zeroshot import encode_texts
    from mammoclip.models import create_model

    torch.manual_seed(0)
    model = create_model("mammoclip-tiny", pretrained=False).eval()
    specs = [AttributeSpec("mass", "mass", ("mass", "a round mass")), AttributeSpec("calc", "calcification", ("calcs",))]
    emb = attribute_embeddings(model, specs, cache_dir=tmp_path)
    ref = torch.nn.functional.normalize(encode_texts(model, ["mass", "a round mass"]).mean(0), dim=0)
    torch.testing.assert_close(emb[0], ref)
    assert emb.shape == (2, model.embed_dim) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert len(list(tmp_path.glob("attributes-*.npz"))) == 1
    # a change of the image tower keeps the key; a change of the text projection makes a new one
    key = text_fingerprint(model)
    with torch.no_grad():
        next(model.image_tower.parameters()).add_(1.0)
    assert text_fingerprint(model) == key
    with torch.no_grad():
        model.text_projection.weight.mul_(-1.0)
    assert text_fingerprint(model) != key
    changed = attribute_embeddings(model, specs, cache_dir=tmp_path)
    fresh = torch.nn.functional.normalize(encode_texts(model, ["calcs"])[0], dim=0)
    torch.testing.assert_close(changed[1], fresh)  # recomputed, not the stale entry
    assert not torch.allclose(changed, emb)
    assert len(list(tmp_path.glob("attributes-*.npz"))) == 2
