"""How the mirror's last run went: the record in status.json, and ``--status`` reading it.

Every run that holds the mirror lock writes ``<mirror-dir>/status.json``
(atomically, beside state.json, never in the served tree) twice: when it starts
(``running``) and however it ends (the one ``finally`` of `Sync.run`): when it
ended, its exit code, error and summary, and the mirror's figures from
state.json (serial, upstream's last serial as seen, pending projects, the RSTUF
outbox and its oldest unsent change, retired copies). ``--status`` reads only
this file: no network, no lock, so it answers while a run is going.
``--metrics-file`` gets the same figures for Prometheus (``ops.metrics``);
``ops.recorder`` writes both files.

A ``running`` record whose process is gone belongs to a run killed before it
could record its end (SIGKILL, the OOM killer, a power cut); the next run
counts it as ``killed``.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import math
import os
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.ops.cli import (
    EXIT_AUDIT_DIFFERS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_PIPE_CLOSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
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


# --- reading status.json


def status_from_json(doc: object) -> Status:
    """A Status from parsed JSON; raises ValueError naming the first bad field."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("schema") != STATUS_SCHEMA:
        raise ValueError(f"unknown schema {doc.get('schema')!r} (this tool reads {STATUS_SCHEMA})")
    return _build(Status, {key: value for key, value in doc.items() if key != "schema"}, "")


@functools.cache
def _fields_of(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """`cls`'s type hints and field names, worked out once a process: `get_type_hints`
    evaluates each annotation's text again every call, and --watch reads its status
    every cycle."""
    return typing.get_type_hints(cls), frozenset(f.name for f in fields(cls))


def _build(cls: type, doc: object, where: str) -> Any:
    """Construct dataclass `cls` from `doc`, checking every field against its type hint."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where or 'status'}: not an object")
    hints, names = _fields_of(cls)
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
