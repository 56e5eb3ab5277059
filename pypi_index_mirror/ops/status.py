"""How the mirror's last run went: status.json, ``--status`` and the metrics file.

Every run that holds the mirror lock writes ``<mirror-dir>/status.json``
(atomically, beside state.json, never in the served tree) twice: when it starts
(``running``) and however it ends (the one ``finally`` of `Sync.run`): when it
ended, its exit code, error and summary, and the mirror's figures from
state.json (serial, upstream's last serial as seen, pending projects, the RSTUF
outbox and its oldest unsent change, retired copies). ``--status`` reads only
this file: no network, no lock, so it answers while a run is going.
``--metrics-file`` gets the same figures in Prometheus's text exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/), named as its
naming guide asks (https://prometheus.io/docs/practices/naming/), for
node_exporter's textfile collector.

A ``running`` record whose process is gone belongs to a run killed before it
could record its end (SIGKILL, the OOM killer, a power cut); the next run
counts it as ``killed``.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import atomic_write, readable_mode
from pypi_index_mirror.ops.cli import (
    EXIT_AUDIT_DIFFERS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_PIPE_CLOSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    VERSION,
    ToolError,
)

log = logging.getLogger(__name__)

STATUS_SCHEMA = 1
# The counters of a run's summary line, in its order.
COUNTS = (
    "added",
    "updated",
    "removed",
    "unchanged",
    "failed",
    "requests",
    "rstuf_sent",
    "rstuf_confirmed",
    "rstuf_not_found",
)
PAGE_COUNTS = COUNTS[:5]
COMPLETED = (EXIT_OK, EXIT_PARTIAL)  # the run finished; 75 keeps some work for the next one
KILLED = "killed"
RESULTS = {
    EXIT_OK: "ok",
    EXIT_PARTIAL: "partial",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_AUDIT_DIFFERS: "differs",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_TERMINATED: "terminated",
    EXIT_PIPE_CLOSED: "output_closed",
}
PENDING_SAMPLE = 5  # pending project names shown by --status


class StatusError(ToolError):
    """status.json is missing or cannot be read; the message says what to check."""


def result_of(exit_code: int | None) -> str:
    """One word for how a run ended (a metric label): ``ok``, ``partial``, ``failed``, ..."""
    if exit_code is None:
        return KILLED
    return RESULTS.get(exit_code, f"exit_{exit_code}")


# --- the record (pure)


@dataclass
class RunRecord:
    """One run: epoch seconds; `ended` and `exit_code` are None while it runs."""

    started: float
    pid: int
    ended: float | None = None
    exit_code: int | None = None
    error: str | None = None  # the one line the run failed with
    counts: dict[str, int] = field(default_factory=dict)  # COUNTS of its summary
    serial_before: int | None = None
    serial_after: int | None = None
    summary: str = ""  # its summary log line

    @property
    def result(self) -> str:
        return result_of(self.exit_code)

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass
class MirrorFigures:
    """The mirror as the last run that read state.json left it."""

    serial: int | None = None  # the changelog serial fully applied
    upstream_serial: int | None = None  # PyPI's last serial, as last seen
    upstream_seen: float | None = None  # when (epoch seconds)
    pending: int = 0  # projects kept for the next run
    pending_sample: list[str] = field(default_factory=list)  # the first few, sorted
    outbox_paths: int = 0  # paths RSTUF has not confirmed
    outbox_tasks: int = 0  # RSTUF tasks accepted, not yet seen to succeed
    # each unconfirmed path -> when it was first seen unsent at the end of a run, at the
    # latest (state.json keeps no times for its outbox; a status keeps them across runs)
    outbox_since: dict[str, float] = field(default_factory=dict)
    retired: int = 0  # old hash-prefixed copies still served during their grace
    full_sync_in_progress: bool = False
    rstuf_used: bool = True  # False: the mirror runs without RSTUF (--no-rstuf)
    # when the mirror was last seen holding PyPI's newest serial (epoch seconds): the age of
    # what it applied, which --watch keeps within seconds
    in_step_seen: float | None = None

    @property
    def lag(self) -> int | None:
        """Serials the mirror is behind upstream, as last seen."""
        if self.serial is None or self.upstream_serial is None:
            return None
        return max(0, self.upstream_serial - self.serial)

    @property
    def oldest_unsent(self) -> float | None:
        return min(self.outbox_since.values(), default=None)


@dataclass
class Status:
    """The content of status.json."""

    written: float = 0.0
    running: RunRecord | None = None  # started, end not recorded yet
    last_run: RunRecord | None = None  # the last run that recorded its end
    last_success: float | None = None  # end of the last run that completed (exit 0 or 75)
    last_killed: RunRecord | None = None  # the last run that never recorded its end
    runs: dict[str, int] = field(default_factory=dict)  # result -> runs, since the file began
    totals: dict[str, int] = field(default_factory=dict)  # COUNTS summed over those runs
    mirror: MirrorFigures = field(default_factory=MirrorFigures)

    def to_json(self) -> dict:
        return {"schema": STATUS_SCHEMA, **asdict(self)}


def figures_of(state: State, previous: MirrorFigures, new_since: float) -> MirrorFigures:
    """The mirror's figures from its state; outbox paths not seen before date from `new_since`."""
    sent_at: dict[str, float] = {}
    for task in state.outbox.tasks:
        for path in task.paths:
            sent_at[path] = min(sent_at.get(path, math.inf), task.sent_at)
    since = {}
    for path in state.outbox.dirty | sent_at.keys():
        known = previous.outbox_since.get(path)
        since[path] = known if known is not None else min(new_since, sent_at.get(path, math.inf))
    return MirrorFigures(
        serial=state.serial,
        upstream_serial=previous.upstream_serial,
        upstream_seen=previous.upstream_seen,
        pending=len(state.pending),
        pending_sample=heapq.nsmallest(PENDING_SAMPLE, state.pending),
        outbox_paths=len(since),
        outbox_tasks=len(state.outbox.tasks),
        outbox_since=since,
        retired=len(state.retired),
        full_sync_in_progress=state.full_sync_in_progress,
        in_step_seen=previous.in_step_seen,
    )


# --- reading and writing status.json


def status_from_json(doc: object) -> Status:
    """A Status from parsed JSON; raises ValueError naming the first bad field."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("schema") != STATUS_SCHEMA:
        raise ValueError(f"unknown schema {doc.get('schema')!r} (this tool reads {STATUS_SCHEMA})")
    return _build(Status, {key: value for key, value in doc.items() if key != "schema"}, "")


def _build(cls: type, doc: object, where: str) -> Any:
    """Construct dataclass `cls` from `doc`, checking every field against its type hint."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where or 'status'}: not an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    if unknown := doc.keys() - names:
        raise ValueError(f"unknown field {where}{sorted(unknown)[0]}")
    values = {key: _check(hints[key], value, f"{where}{key}") for key, value in doc.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"{where or 'status'}: {exc}") from None


def _check(hint: Any, value: object, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        origin = typing.get_origin(hint)
    if origin is dict:
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: not an object")
        return {str(k): _check(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where}: not a list")
        return [_check(item_hint, item, where) for item in value]
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return _build(hint, value, f"{where}.")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ValueError(f"{where}: {value!r:.40} is not a {getattr(hint, '__name__', hint)}")


def load_status(path: Path) -> Status | None:
    """Read status.json; None when there is none; StatusError when it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StatusError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return status_from_json(json.loads(raw))
    except ValueError as exc:  # json's JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StatusError(
            f"{path} is damaged ({exc}); the next run replaces it (the mirror itself is "
            "unaffected: its state is in state.json)"
        ) from None


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


# --- --status


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (a reused pid would read as alive: rare, named in output)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def age(seconds: float) -> str:
    """A duration a person reads at a glance: ``45s``, ``3m 12s``, ``2h 5m``, ``3d 4h``."""
    seconds = max(0, int(seconds))
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} {seconds % size // small_size}{smaller}"
    return f"{seconds // 60}m {seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def duration_text(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else age(seconds)


def plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def status_document(
    status: Status, now: float, alive: Callable[[int], bool] = pid_alive
) -> dict[str, Any]:
    """What ``--status --json`` prints: times as UTC ISO 8601, ages and durations in seconds."""
    mirror = status.mirror
    oldest = mirror.oldest_unsent
    running = status.running
    return {
        "written": iso(status.written),
        "running": None
        if running is None
        else {"pid": running.pid, "started": iso(running.started), "alive": alive(running.pid)},
        "last_run": None if status.last_run is None else run_document(status.last_run),
        "last_success": iso(status.last_success),
        "last_success_age_seconds": None
        if status.last_success is None
        else round(now - status.last_success, 3),
        "last_killed": None if status.last_killed is None else run_document(status.last_killed),
        "serial": mirror.serial,
        "upstream_serial": mirror.upstream_serial,
        "upstream_seen": iso(mirror.upstream_seen),
        "lag": mirror.lag,
        "pending": mirror.pending,
        "pending_sample": mirror.pending_sample,
        "outbox": {
            "paths": mirror.outbox_paths,
            "tasks": mirror.outbox_tasks,
            "oldest_unsent": iso(oldest),
            "oldest_unsent_age_seconds": None if oldest is None else round(now - oldest, 3),
        },
        "retired_copies": mirror.retired,
        "full_sync_in_progress": mirror.full_sync_in_progress,
        "rstuf_used": mirror.rstuf_used,
        "runs": dict(sorted(status.runs.items())),
    }


def run_document(run: RunRecord) -> dict[str, Any]:
    duration = run.duration
    return {
        "pid": run.pid,
        "started": iso(run.started),
        "ended": iso(run.ended),
        "duration_seconds": None if duration is None else round(duration, 3),
        "exit_code": run.exit_code,
        "result": run.result,
        "error": run.error,
        "summary": run.summary,
        "counts": run.counts,
        "serial_before": run.serial_before,
        "serial_after": run.serial_after,
    }


def render_text(status: Status, now: float, alive: Callable[[int], bool] = pid_alive) -> str:
    """What ``--status`` prints: one labelled line per figure."""
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<13} {text}")

    def when(epoch: float) -> str:
        return f"{iso(epoch)} ({age(now - epoch)} ago)"

    row("written", when(status.written))
    if status.running is not None:
        pid, started = status.running.pid, status.running.started
        if alive(pid):
            row("running", f"pid {pid}, since {when(started)}")
        else:
            row("killed", f"the run of {iso(started)} (pid {pid}) ended without recording how")
    last = status.last_run
    if last is None:
        row("last run", "none recorded its end yet")
    else:
        assert last.ended is not None and last.duration is not None
        row(
            "last run",
            f"started {iso(last.started)}, ended {when(last.ended)}, "
            f"took {duration_text(last.duration)}: "
            f"exit {last.exit_code} ({last.result})",
        )
        if last.summary:
            row("", last.summary)
        if last.error:
            row("error", last.error)
    row("last success", when(status.last_success) if status.last_success else "never")
    if status.last_killed is not None:
        killed = status.last_killed
        row("last killed", f"the run of {iso(killed.started)} (pid {killed.pid})")
    mirror = status.mirror
    upstream = "upstream not seen yet"
    if mirror.upstream_serial is not None and mirror.upstream_seen is not None:
        upstream = f"upstream {mirror.upstream_serial} as seen {iso(mirror.upstream_seen)}"
        if mirror.lag is not None:
            upstream += f", lag {mirror.lag}"
    row("serial", f"{mirror.serial if mirror.serial is not None else 'none yet'}; {upstream}")
    if mirror.full_sync_in_progress:
        row("full sync", "in progress; the next run resumes it")
    sample = ", ".join(mirror.pending_sample)
    more = ", ..." if mirror.pending > len(mirror.pending_sample) else ""
    row("pending", plural(mirror.pending, "project") + (f" ({sample}{more})" if sample else ""))
    if not mirror.rstuf_used:
        row("outbox", "not used: this mirror runs without RSTUF (--no-rstuf)")
    elif mirror.outbox_paths:
        oldest = mirror.oldest_unsent
        assert oldest is not None
        row(
            "outbox",
            f"{plural(mirror.outbox_paths, 'path')} not confirmed by RSTUF "
            f"({plural(mirror.outbox_tasks, 'task')} in flight); "
            f"oldest unsent change {when(oldest)}",
        )
    else:
        row("outbox", "empty: RSTUF has every change")
    copies = plural(mirror.retired, "old hash-prefixed copy", "old hash-prefixed copies")
    row("retired", f"{copies} in their grace")
    return "\n".join(lines)


def show_status(
    path: Path, as_json: bool, out: Callable[[str], None] = print, now: float | None = None
) -> int:
    """``--status``: print what the last run recorded; StatusError if there is nothing."""
    status = load_status(path)
    if status is None:
        raise StatusError(
            f"no status file {path}: no run has used this mirror directory yet "
            "(check --mirror-dir or --config)"
        )
    now = time.time() if now is None else now
    if as_json:
        out(json.dumps(status_document(status, now), indent=1))
    else:
        out(render_text(status, now))
    return EXIT_OK


# --- metrics


GAUGE, COUNTER = "gauge", "counter"
# Every metric family, without the pypi_mirror_ prefix: its type and help text.
FAMILIES: dict[str, tuple[str, str]] = {
    "info": (GAUGE, "The version of pypi-index-mirror that wrote these metrics."),
    "last_run_start_timestamp_seconds": (GAUGE, "When the last run started (Unix time)."),
    "last_run_end_timestamp_seconds": (GAUGE, "When the last run ended (Unix time)."),
    "last_run_duration_seconds": (GAUGE, "How long the last run took."),
    "last_run_exit_code": (GAUGE, "The last run's exit code (0 done, 75 partly done, 1 failed)."),
    "last_run_pages": (
        GAUGE,
        "Pages the last run added, updated, removed, found unchanged or failed to fetch.",
    ),
    "last_run_pypi_requests": (GAUGE, "Requests the last run made to PyPI."),
    "last_run_rstuf_artifacts_sent": (GAUGE, "Artifacts the last run sent to RSTUF."),
    "last_run_rstuf_artifacts_confirmed": (
        GAUGE,
        "Paths RSTUF confirmed in the last run, whichever run sent them.",
    ),
    "last_run_rstuf_deletes_not_found": (
        GAUGE,
        "Deletes RSTUF answered not_found_artifacts in the last run, for paths the mirror "
        "recorded as signed.",
    ),
    "last_success_timestamp_seconds": (
        GAUGE,
        "When the last run that completed (exit 0 or 75) ended (Unix time).",
    ),
    "runs_total": (COUNTER, "Runs recorded in the status file, by result."),
    "pages_total": (
        COUNTER,
        "Pages added, updated, removed, found unchanged or failed to fetch, over recorded runs.",
    ),
    "pypi_requests_total": (COUNTER, "Requests made to PyPI over recorded runs."),
    "rstuf_artifacts_sent_total": (COUNTER, "Artifacts sent to RSTUF over recorded runs."),
    "rstuf_artifacts_confirmed_total": (
        COUNTER,
        "Paths RSTUF confirmed over recorded runs.",
    ),
    "rstuf_deletes_not_found_total": (
        COUNTER,
        "Deletes RSTUF answered not_found_artifacts, for paths the mirror recorded as signed, "
        "over recorded runs.",
    ),
    "serial": (GAUGE, "The PyPI changelog serial the mirror has fully applied."),
    "upstream_serial": (GAUGE, "PyPI's last changelog serial, as last seen."),
    "upstream_serial_timestamp_seconds": (GAUGE, "When PyPI's last serial was seen (Unix time)."),
    "serial_lag": (GAUGE, "Changelog serials the mirror is behind PyPI, as last seen."),
    "in_step_timestamp_seconds": (
        GAUGE,
        "When the mirror was last seen holding PyPI's newest serial (Unix time): now minus "
        "this is the age of the newest serial it applied.",
    ),
    "pending_projects": (GAUGE, "Projects whose page failed or stayed stale, kept for next run."),
    "outbox_paths": (GAUGE, "Changed paths RSTUF has not confirmed yet."),
    "outbox_tasks": (GAUGE, "RSTUF tasks accepted but not yet seen to succeed."),
    "outbox_oldest_unsent_timestamp_seconds": (
        GAUGE,
        "Since when the oldest change RSTUF has not confirmed waits, at the latest "
        "(Unix time; no sample while the outbox is empty).",
    ),
    "retired_copies": (GAUGE, "Old hash-prefixed page copies still served in their grace."),
    "full_sync_in_progress": (GAUGE, "1 while a first sync or --full-check is unfinished."),
}
PREFIX = "pypi_mirror_"

Sample = tuple[str, dict[str, str], float | None]  # family, labels, value (None: unknown)


def metric_samples(status: Status) -> Iterator[Sample]:
    """Every figure of the status as a sample of one of `FAMILIES`."""
    yield "info", {"version": VERSION}, 1
    last = status.last_run
    if last is not None:
        yield "last_run_start_timestamp_seconds", {}, last.started
        yield "last_run_end_timestamp_seconds", {}, last.ended
        yield "last_run_duration_seconds", {}, last.duration
        yield "last_run_exit_code", {}, last.exit_code
        for name in PAGE_COUNTS:
            yield "last_run_pages", {"change": name}, last.counts.get(name)
        yield "last_run_pypi_requests", {}, last.counts.get("requests")
        yield "last_run_rstuf_artifacts_sent", {}, last.counts.get("rstuf_sent")
        yield "last_run_rstuf_artifacts_confirmed", {}, last.counts.get("rstuf_confirmed")
        yield "last_run_rstuf_deletes_not_found", {}, last.counts.get("rstuf_not_found")
    yield "last_success_timestamp_seconds", {}, status.last_success
    for result, count in sorted(status.runs.items()):
        yield "runs_total", {"result": result}, count
    for name in PAGE_COUNTS:
        yield "pages_total", {"change": name}, status.totals.get(name, 0)
    yield "pypi_requests_total", {}, status.totals.get("requests", 0)
    yield "rstuf_artifacts_sent_total", {}, status.totals.get("rstuf_sent", 0)
    yield "rstuf_artifacts_confirmed_total", {}, status.totals.get("rstuf_confirmed", 0)
    yield "rstuf_deletes_not_found_total", {}, status.totals.get("rstuf_not_found", 0)
    mirror = status.mirror
    yield "serial", {}, mirror.serial
    yield "upstream_serial", {}, mirror.upstream_serial
    yield "upstream_serial_timestamp_seconds", {}, mirror.upstream_seen
    yield "serial_lag", {}, mirror.lag
    yield "in_step_timestamp_seconds", {}, mirror.in_step_seen
    yield "pending_projects", {}, mirror.pending
    yield "outbox_paths", {}, mirror.outbox_paths
    yield "outbox_tasks", {}, mirror.outbox_tasks
    yield "outbox_oldest_unsent_timestamp_seconds", {}, mirror.oldest_unsent
    yield "retired_copies", {}, mirror.retired
    yield "full_sync_in_progress", {}, int(mirror.full_sync_in_progress)


def render_metrics(status: Status) -> str:
    """The text exposition format: per family ``# HELP``, ``# TYPE``, then its samples.

    A figure not known yet (no upstream serial seen, an empty outbox) has no
    sample, rather than a made-up 0 an alert would misread.
    """
    samples: dict[str, list[str]] = {}
    for family, labels, value in metric_samples(status):
        if value is not None:
            pairs = ",".join(f'{key}="{escape(text)}"' for key, text in labels.items())
            selector = f"{PREFIX}{family}{{{pairs}}}" if pairs else PREFIX + family
            samples.setdefault(family, []).append(f"{selector} {number_text(value)}")
    lines = []
    for family, family_samples in samples.items():
        kind, text = FAMILIES[family]
        lines += [f"# HELP {PREFIX}{family} {escape(text, quote=False)}"]
        lines += [f"# TYPE {PREFIX}{family} {kind}", *family_samples]
    return "".join(line + "\n" for line in lines)


def escape(text: str, quote: bool = True) -> str:
    """Escape a help text or (with `quote`) a label value as the format requires."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def number_text(value: float) -> str:
    """A sample value: integers as integers, others as the shortest exact float."""
    if isinstance(value, int):
        return str(int(value))
    return repr(float(value))
