"""Evaluation commands let the progress helper decide (bar on a terminal, bounded lines in a log)."""

from __future__ import annotations

from typing import Any

import pytest

from mammoclip.cli.main import main


def test_zeroshot_command_leaves_progress_to_the_helper(make_cohort, tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import mammoclip.evaluate.features as features
    import mammoclip.evaluate.zeroshot as zeroshot
    from mammoclip.progress import progress_bar

    seen: list[Any] = []

    def recording(total: int | None, desc: str = "", unit: str = "it", **kwargs: Any) -> Any:
        seen.append((desc, kwargs.get("enabled")))
        return progress_bar(total, desc, unit, **kwargs)

    monkeypatch.setattr(zeroshot, "progress_bar", recording)
    monkeypatch.setattr(features, "progress_bar", recording)
    cohort = make_cohort(n_patients=3, size=(128, 80))
    assert main(["zeroshot", "--checkpoint", "mammoclip-tiny", "--manifest", str(cohort), "--task", "mass",
                 "--split", "all", "--workers", "0", "--n-boot", "0", "--out", str(tmp_path / "zs")]) == 0
    # None: a tqdm bar only on a terminal; under pytest stderr is captured, so log lines (never a forced bar)
    assert seen and all(enabled is None for _, enabled in seen), seen
    assert "\r" not in capsys.readouterr().err  # no tqdm carriage returns in a log
