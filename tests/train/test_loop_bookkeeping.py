"""Run-folder bookkeeping: best/ stays consistent with the recorded score across a kill, and the
temporary folders of a killed atomic write are removed on the next start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mammoclip.train import loop as loop_mod
from mammoclip.train.loop import list_checkpoints, load_training_state
from tests.train.test_loop import _fit


class _Killed(BaseException):
    """Stands for SIGKILL: raised where the process would die, caught by nothing in the loop."""


def _kill_on_export(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """Make the ``at_call``-th write of best/ die before it starts (after the checkpoint was saved)."""
    real = loop_mod._export_best
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == at_call:
            raise _Killed
        real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "_export_best", dying)


@pytest.mark.parametrize(("epochs", "best_before"), [(1, None), (2, 6)], ids=["best-missing", "best-older"])
def test_kill_between_best_score_and_best_dir_is_repaired_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, epochs: int,
    best_before: int | None,
) -> None:
    torch.manual_seed(0)
    _kill_on_export(monkeypatch, at_call=epochs)  # the last epoch's best/ write dies
    with pytest.raises(_Killed):
        _fit(tmp_path, epochs=epochs)
    last = list_checkpoints(tmp_path)[-1]
    state = load_training_state(last)
    # the score of the last epoch is recorded (6 steps per epoch; the toy task improves every epoch)
    assert state["global_step"] == 6 * epochs
    assert state["best"] == min(h["val/loss"] for h in state["history"]) == state["history"][-1]["val/loss"]
    best_meta = tmp_path / "best" / "meta.json"
    if best_before is None:
        assert not (tmp_path / "best").exists()
    else:
        assert json.loads(best_meta.read_text())["global_step"] == best_before

    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="mammoclip.train.loop"):
        _, res = _fit(tmp_path, epochs=epochs, resume=True)  # nothing left to train: only the repair
    assert res.steps == 6 * epochs and res.best == tmp_path / "best"
    meta = json.loads(best_meta.read_text())
    assert meta["global_step"] == 6 * epochs and meta["val/loss"] == state["best"]
    weights = torch.load(tmp_path / "best" / "model.pt", map_location="cpu", weights_only=True)
    assert weights.keys() == state["model"].keys()
    for name, value in state["model"].items():
        assert torch.equal(weights[name], value), name
    assert [r for r in caplog.records if "best/ was" in r.getMessage() and last.name in r.getMessage()]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_best_dir_consistent_is_left_alone_on_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    _fit(tmp_path, epochs=1)
    before = (tmp_path / "best" / "model.pt").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="mammoclip.train.loop"):
        _fit(tmp_path, epochs=1, resume=True)
    assert (tmp_path / "best" / "model.pt").stat().st_mtime_ns == before
    assert not caplog.records


def test_state_without_best_step_derives_it_from_the_history(tmp_path: Path) -> None:
    """A checkpoint written before ``best_step`` existed is repaired too (epoch x steps per epoch)."""
    torch.manual_seed(0)
    _fit(tmp_path, epochs=2)
    last = list_checkpoints(tmp_path)[-1]
    state = load_training_state(last)
    del state["best_step"]
    torch.save(state, last / loop_mod.STATE_FILE)
    for p in (tmp_path / "best").iterdir():
        p.unlink()
    (tmp_path / "best").rmdir()
    _, res = _fit(tmp_path, epochs=2, resume=True)
    assert res.best is not None
    assert json.loads((res.best / "meta.json").read_text())["global_step"] == 12


def test_stale_temp_folders_are_removed_on_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stale = [tmp_path / ".tmp-best-4242", tmp_path / ".old-best-17",
             tmp_path / "checkpoints" / ".tmp-step-00000004-999", tmp_path / "checkpoints" / ".old-step-00000002-5"]
    kept = [tmp_path / ".tmp-notes", tmp_path / "checkpoints" / ".tmp-step-4-1", tmp_path / "mine" / ".tmp-best-1"]
    for d in stale + kept:
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"half")
    (tmp_path / ".tmp-best-7").write_text("a file, not a folder of ours")
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="mammoclip.train.loop"):
        _fit(tmp_path, epochs=1)
    assert not [d for d in stale if d.exists()]
    assert all(d.is_dir() for d in kept) and (tmp_path / ".tmp-best-7").is_file()
    lines = [r.getMessage() for r in caplog.records if "stale temporary" in r.getMessage()]
    assert len(lines) == 1 and "removed 4 stale" in lines[0] and "\n" not in lines[0]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006"]
