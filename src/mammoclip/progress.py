"""Progress reporting that works in a terminal and in a log file.

A tqdm bar on a terminal (or wherever a caller asks for one with ``enabled=True``); by default, when
the stream is not a terminal (output redirected to a log, a batch
job, CI), tqdm's bar would either be silent (``disable=None``) or fill the log with carriage returns.
There, :class:`LogProgress` writes one plain line at a bounded interval instead: at most every
``interval_s`` seconds, and at each ``step_fraction`` of the total once ``min_gap_s`` seconds have
passed since the previous line, each with the count, the rate and the ETA. A 40-minute pre-training
redirected to a file then says how far it is, instead of nothing.

Layer 0: no torch, no numpy; every package may use it (``docs/architecture.md``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["LogProgress", "format_duration", "progress_bar"]

#: Longest silence of a non-terminal progress log, in seconds.
LOG_INTERVAL_S: float = 30.0
#: A line is also written each time this fraction of the total is done ...
LOG_STEP_FRACTION: float = 0.05
#: ... provided this many seconds passed since the previous line (no flood from fast loops).
LOG_MIN_GAP_S: float = 5.0


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"`` (the clock format tqdm uses)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """A tqdm-compatible progress object (``update``, ``set_postfix``, ``close``, context manager)
    that writes plain lines to a stream that is not a terminal.

    Args:
        total: Units expected (None: unknown; no percentage or ETA is shown).
        desc: Label at the start of each line.
        unit: Name of one unit ("img", "step").
        initial: Units already done (a resumed run).
        stream: Where lines go (default: ``sys.stderr`` at the time of each write).
        clock: Monotonic clock in seconds (injectable for tests).
        interval_s, step_fraction, min_gap_s: See the module docstring.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, initial: int = 0,
                 stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 interval_s: float = LOG_INTERVAL_S, step_fraction: float = LOG_STEP_FRACTION,
                 min_gap_s: float = LOG_MIN_GAP_S) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self._stream, self._clock = stream, clock
        self.interval_s, self.step_fraction, self.min_gap_s = interval_s, step_fraction, min_gap_s
        self._start = self._last = clock()
        self._last_fraction = self._fraction()
        self._postfix = ""
        self.lines_written = 0
        self.closed = False

    def _fraction(self) -> float:
        return self.n / self.total if self.total else 0.0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; write a line if the interval rule says so."""
        self.n += n
        now = self._clock()
        since = now - self._last
        stepped = self.total is not None and self._fraction() - self._last_fraction >= self.step_fraction
        if since >= self.interval_s or (stepped and since >= self.min_gap_s):
            self._write(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` fields appended to the next line (tqdm's signature)."""
        fields = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in fields.items())

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be written now."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {count}" if self.desc else count]
        if self.total:
            parts[0] += f" ({100 * self._fraction():.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total is not None and rate > 0:
            parts.append(f"ETA {format_duration(max(0, self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _write(self, now: float) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(self.line(now), file=stream, flush=True)
        self._last, self._last_fraction = now, self._fraction()
        self.lines_written += 1

    def close(self) -> None:
        """A last line when any was written (so a log shows how the stage ended); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.lines_written and self.n != self.initial:
            self._write(self._clock())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoProgress:
    """What ``progress_bar(enabled=False)`` returns: the same interface, doing nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed stream
        return False


def progress_bar(total: int | None, desc: str = "", unit: str = "it", *, enabled: bool | None = None,
                 initial: int = 0, stream: IO[str] | None = None, **log_options: Any) -> Any:
    """A progress object for a loop: a tqdm bar on a terminal, :class:`LogProgress` lines otherwise.

    Args:
        total: Units expected.
        desc: Label ("preprocess", "epoch 2/4").
        unit: Name of one unit.
        enabled: None (the default of every stage): a bar on a terminal, bounded log lines elsewhere
            (before, nothing at all off a terminal); True: a tqdm bar wherever the stream goes (the
            caller asked for one); False: nothing.
        initial: Units already done (a resumed run).
        stream: The stream to report to (default ``sys.stderr``).
        **log_options: Passed to :class:`LogProgress` (``clock``, ``interval_s``, ...).

    Returns:
        An object with ``update(n)``, ``set_postfix(**fields)`` and ``close()``.
    """
    if enabled is False:
        return _NoProgress()
    target = stream if stream is not None else sys.stderr
    if enabled is True or _is_terminal(target):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=target, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial=initial, stream=stream, **log_options)
