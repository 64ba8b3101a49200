"""Progress in a log: bounded lines with count, rate and ETA when stderr is not a terminal, and the demo's
estimate revised after each stage. Fake streams and fake clocks: no sleeps, no timing asserts."""

from __future__ import annotations

import io
import re

import pytest

from mammoclip.demo import STAGES, DemoConfig, _Stages, estimate_seconds, stage_estimates
from mammoclip.progress import LogProgress, format_duration, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"


def test_non_terminal_gets_log_lines_a_terminal_or_true_gets_a_bar_and_false_nothing() -> None:
    log = io.StringIO()
    assert isinstance(progress_bar(10, "x", stream=log), LogProgress)
    off = progress_bar(10, "x", stream=log, enabled=False)
    off.update(5)
    off.set_postfix(loss=1)
    off.close()
    assert log.getvalue() == ""
    from tqdm import tqdm

    for bar in (progress_bar(10, "x", stream=Terminal()), progress_bar(10, "x", stream=log, enabled=True)):
        assert isinstance(bar, tqdm)  # a terminal, or a caller that asked for a bar explicitly
        bar.close()


def test_slow_loop_writes_a_line_every_interval_with_rate_and_eta() -> None:
    """A 40-minute loop of 480 steps (5 s each): a line at each 5 % once 5 s passed, never more than 30 s apart."""
    log, clock = io.StringIO(), FakeClock()
    bar = LogProgress(480, "epoch 1/4", "step", stream=log, clock=clock)
    for _ in range(480):
        clock.now += 5.0
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = log.getvalue().splitlines()
    # 5 % of 480 = 24 steps = 120 s > 30 s: the 30 s rule decides, one line per 6 steps, + the closing one
    assert len(lines) == 480 // 6 + 1
    assert lines[0] == "epoch 1/4: 6/480 step (1%), 5 s/step, elapsed 0:30, ETA 39:30, loss=0.5"
    assert lines[-1].startswith("epoch 1/4: 480/480 step (100%), 5 s/step, elapsed 40:00, ETA 0:00")


def test_fast_loop_is_bounded_by_the_percent_rule_and_the_minimum_gap() -> None:
    """10,000 images at 64 img/s (156 s): a line at each 5 % (every 7.8 s), not one per update."""
    log, clock = io.StringIO(), FakeClock()
    bar = LogProgress(10_000, "features", "img", stream=log, clock=clock)
    for _ in range(10_000):
        clock.now += 1 / 64  # exact in binary
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert 19 <= len(lines) <= 21
    m = re.match(r"features: 500/10000 img \(5%\), 64 img/s, elapsed 0:08, ETA 2:28$", lines[0])
    assert m, lines[0]


def test_quick_loop_stays_silent_and_resumed_rate_counts_only_new_work() -> None:
    log, clock = io.StringIO(), FakeClock()
    bar = LogProgress(100, "synth", "patient", stream=log, clock=clock)
    for _ in range(100):
        clock.now += 0.01  # 1 s in total: under the minimum gap
        bar.update(1)
    bar.close()
    assert log.getvalue() == ""

    resumed = LogProgress(100, "epoch 2/2", "step", initial=50, stream=log, clock=clock)
    clock.now += 31.0
    resumed.update(10)
    assert log.getvalue().splitlines()[0].startswith("epoch 2/2: 60/100 step (60%), 3.1 s/step, elapsed 0:31, ETA 2:04")


def test_demo_revises_its_estimate_after_each_stage_from_the_measured_speed() -> None:
    cfg = DemoConfig()
    est = stage_estimates(cfg)
    assert list(est) == list(STAGES)
    assert sum(est.values()) < estimate_seconds(cfg)
    clock, lines = FakeClock(), []
    stages = _Stages(len(STAGES), lines.append, est, clock=clock)

    def take(seconds: float):
        def fn() -> str:
            clock.now += seconds
            return "ok"
        return fn

    # a machine 3x slower than the reference: each stage takes 3x its estimate
    for name in STAGES:
        assert stages.run(name, name, take(3 * est[name])) == "ok"
    assert len(stages.revisions) == len(STAGES) - 1
    # after the first stage: 3x the whole run's stage time
    assert stages.revisions[0] == pytest.approx(3 * sum(est.values()), rel=1e-3)
    assert all(r == pytest.approx(3 * sum(est.values()), rel=1e-3) for r in stages.revisions)
    revised = [line for line in lines if "revised estimate" in line]
    assert len(revised) == len(STAGES) - 1
    assert f"{3 * sum(est.values()) / 60:.1f} min in total" in revised[0]
    assert "3x the reference time" in revised[0]
