"""Progress of the long phases (fetching pages, delivering to RSTUF).

On a terminal: a tqdm bar (counts, rate, elapsed, ETA, failures), with every
log line written above it through ``tqdm.write`` (``logging_redirect_tqdm``) so
a warning never lands inside the bar. Without a terminal (cron, systemd): one
log line every ``--progress-interval`` seconds while a phase lasts, from a
timer thread, so a phase that stalls still reports (0/s) rather than go quiet.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)


@functools.cache
def bar_class() -> type[tqdm]:
    """tqdm without its monitor thread (our phases update often, nothing to watch for).

    Imported on the first bar only: under cron (no terminal) no run draws one, and
    tqdm was a sixth of the start-up.
    """
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0

    return Bar


@dataclass
class Phase:
    """The counts of one phase; `started` from the progress clock (seconds)."""

    label: str
    total: int
    unit: str
    started: float
    done: int = 0
    failed: int = 0

    def line(self, now: float, outcome: str = "") -> str:
        """``fetching: 2659/4999 pages (53%), 812.0/s, 3 failed, 3s elapsed, ETA 3s``.

        With `outcome` (``done``), it replaces the ETA: the phase's last line.
        """
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        if outcome:
            eta = outcome
        else:
            eta = f"ETA {(self.total - self.done) / rate:.0f}s" if rate > 0 else "ETA unknown"
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit}{share}, {rate:.1f}/s, "
            f"{self.failed} failed, {elapsed:.0f}s elapsed, {eta}"
        )


class Progress:
    """One phase at a time: `start`, `advance` (or `update_to`), `finish`; `close` at the end.

    `bar`: draw a bar on `stream` (stderr is a terminal). Otherwise, with an
    `interval` > 0, log a progress line every `interval` seconds of a phase.
    """

    def __init__(
        self,
        bar: bool,
        interval: float = 60.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bar, self.interval, self.clock = bar, interval, clock
        self.stream = stream  # None: sys.stderr when the bar is drawn
        self.phase: Phase | None = None
        self._bar: tqdm | None = None
        self._redirect: AbstractContextManager | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._reported = False  # a progress line was logged during this phase

    def start(self, total: int, label: str, unit: str = "pages") -> None:
        self.finish()
        self.phase = Phase(label, total, unit, self.clock())
        if self.bar:
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = bar_class()
            self._redirect = logging_redirect_tqdm(tqdm_class=bar)
            self._redirect.__enter__()
            self._bar = bar(
                total=total,
                desc=label,
                unit=f" {unit}",
                file=self.stream or sys.stderr,
                dynamic_ncols=True,
                postfix="0 failed",
            )
        elif self.interval > 0 and total:
            self._stop.clear()
            self._reported = False
            self._timer = threading.Thread(target=self._report_every_interval, daemon=True)
            self._timer.start()

    def advance(self, count: int = 1, failed: bool = False) -> None:
        phase = self.phase
        if phase is None:
            return
        phase.done += count
        phase.failed += failed
        if self._bar is not None:
            if failed:
                self._bar.set_postfix_str(f"{phase.failed} failed", refresh=False)
            self._bar.update(count)

    def update_to(self, done: int) -> None:
        """Set the count done so far (when a phase learns totals, not single steps)."""
        if self.phase is not None and done > self.phase.done:
            self.advance(done - self.phase.done)

    def finish(self, outcome: str = "done") -> None:
        """End the phase: close the bar, or stop the timer (and log a last line if it logged)."""
        phase, self.phase = self.phase, None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._timer is not None:
            self._stop.set()
            self._timer.join()
            self._timer = None
            if self._reported and phase is not None:
                log.info("%s", phase.line(self.clock(), outcome))

    def close(self) -> None:
        """At the end of a run, however it ends: no bar or timer is left behind."""
        self.finish("unfinished")  # a phase still open here was cut short by an error

    def _report_every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            phase = self.phase
            if phase is not None:
                self._reported = True
                log.info("%s", phase.line(self.clock()))
