"""Recording a run: status.json and the metrics file, written when it starts and ends.

`StatusRecorder` is what a run calls; it keeps the record ``ops.status``
defines and renders (``ops.metrics`` for the metrics file) and writes both
files atomically, readable by monitoring. Apart from both because it is the
one piece that writes: the record and its renderings stay pure.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import atomic_write, readable_mode
from pypi_index_mirror.ops.metrics import render_metrics
from pypi_index_mirror.ops.status import (
    COMPLETED,
    COUNTS,
    KILLED,
    RunRecord,
    Status,
    StatusError,
    figures_of,
    load_status,
)

log = logging.getLogger(__name__)


def write_public(path: Path, text: str, staging_dir: Path) -> None:
    """Replace `path` atomically with a file others may read (monitoring, node_exporter)."""
    atomic_write(
        path, text.encode(), staging_dir, prefix=f".{path.name}.tmp-", mode=readable_mode()
    )


class RunSummary(Protocol):
    """What a run's summary tells (pypi_mirror.Summary has these)."""

    added: int
    updated: int
    removed: int
    unchanged: int
    failed: int
    requests: int
    rstuf_sent: int
    rstuf_confirmed: int
    rstuf_not_found: int
    pending: int | None  # projects still to fetch, as the run's last line says
    serial_before: int | None
    serial_after: int | None
    upstream_serial: int | None
    upstream_seen: float | None

    def line(self) -> str: ...


class StatusRecorder:
    """Records a run in status.json (and the metrics file) when it starts and when it ends.

    Called only while the run holds the mirror lock, so two runs never race on
    the file (`metrics_only` excepted: there is no mirror directory, hence no
    lock). Failing to write is logged and never changes how the run ends: the
    mirror matters more than its report.
    """

    def __init__(
        self,
        path: Path,
        staging_dir: Path,
        metrics_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
        rstuf_used: bool = True,
    ) -> None:
        self.path, self.staging_dir, self.metrics_file = path, staging_dir, metrics_file
        self.rstuf_used = rstuf_used  # False: --no-rstuf, whose outbox says nothing
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.status = Status()
        self.new_since = 0.0  # outbox paths first seen now date from here
        self.begun = False  # `begin` recorded this run as running

    def begin(self, started: float | None = None) -> None:
        """Record the run as running (`started`: when it began, if not now)."""
        try:
            status = load_status(self.path) or Status()
        except StatusError as exc:
            log.warning("%s", exc)
            status = Status()
        now = self.clock()
        self.new_since = now
        if status.running is not None:  # the previous run never recorded its end
            status.last_killed = status.running
            status.runs[KILLED] = status.runs.get(KILLED, 0) + 1
            self.new_since = min(now, status.running.started)  # its outbox changes
        status.running = RunRecord(started=now if started is None else started, pid=self.pid)
        self.begun = True
        status.written = now
        self.status = status
        self._write(metrics=False)

    def end(
        self,
        exit_code: int,
        error: str | None,
        summary: RunSummary,
        state: State | None,  # None: state.json was never read (damaged), figures kept
        status_file: bool = True,  # False: only the metrics (no directory to write it in)
    ) -> None:
        status, now = self.status, self.clock()
        run = status.running or RunRecord(started=now, pid=self.pid)
        run.ended, run.exit_code, run.error = now, exit_code, error
        run.counts = {name: getattr(summary, name) for name in COUNTS}
        run.serial_before, run.serial_after = summary.serial_before, summary.serial_after
        run.summary = summary.line()
        status.running, status.last_run, status.written = None, run, now
        status.runs[run.result] = status.runs.get(run.result, 0) + 1
        for name, count in run.counts.items():
            status.totals[name] = status.totals.get(name, 0) + count
        if exit_code in COMPLETED:
            status.last_success = now
        if state is not None:
            status.mirror = figures_of(state, status.mirror, self.new_since)
            if summary.pending is not None:  # with the pages a full sync still owes unlisted
                status.mirror.pending = summary.pending
        status.mirror.rstuf_used = self.rstuf_used
        if summary.upstream_serial is not None:
            status.mirror.upstream_serial = summary.upstream_serial
            status.mirror.upstream_seen = summary.upstream_seen
            if status.mirror.lag == 0:
                status.mirror.in_step_seen = summary.upstream_seen
        self._write(metrics=True, status_file=status_file)

    def metrics_only(
        self, exit_code: int, error: str | None, summary: RunSummary, started: float
    ) -> None:
        """Record a run that failed where no status.json can be written: the metrics alone.

        Its mirror directory is missing, and creating it for a status file would
        turn a missing mirror into an empty one. The counters start from this run.
        """
        self.status = Status(running=RunRecord(started=started, pid=self.pid))
        self.end(exit_code, error, summary, None, status_file=False)

    def _write(self, metrics: bool, status_file: bool = True) -> None:
        text = json.dumps(self.status.to_json(), indent=1, sort_keys=True) + "\n"
        targets = [(self.path, text, self.staging_dir)] if status_file else []
        if metrics and self.metrics_file is not None:
            metrics_file = self.metrics_file.absolute()
            targets.append((metrics_file, render_metrics(self.status), metrics_file.parent))
        for path, content, staging in targets:
            try:
                write_public(path, content, staging)
            except OSError as exc:
                log.warning("cannot write %s: %s; the run goes on without it", path, exc)
