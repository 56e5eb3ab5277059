"""Progress of the long phases: a bar on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line bar on a terminal; nothing at all otherwise (cron reads the log lines)."""

    def __init__(self, enabled: bool, stream=sys.stderr) -> None:
        self.enabled, self.stream = enabled, stream
        self.total = 0
        self.done = 0
        self._last = 0.0

    def start(self, total: int, label: str) -> None:
        self.total, self.done, self.label = total, 0, label

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            share = self.done / self.total if self.total else 1.0
            bar = "#" * int(share * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            self.stream.write("\n")
            self.stream.flush()
