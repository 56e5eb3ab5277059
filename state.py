"""state.json: what a run needs to resume, saved atomically and durably.

The serial the mirror is at, projects still to fetch, the RSTUF outbox and the
hash-prefixed copies waiting out their grace. A damaged or foreign file is a
`StateError` whose message says how to recover; nothing here talks to the network.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cli_support import ToolError
from mirror_store import InvalidProjectName, atomic_write, project_dir_name

STATE_SCHEMA = 1


class StateError(ToolError):
    """state.json cannot be trusted; the message says how to recover."""


@dataclass(slots=True)
class PendingProject:
    """A project whose page still has to be fetched (it failed or stayed stale)."""

    display_name: str
    serial: int  # the changelog serial its page must reach
    # the newest entry says the project exists: a 404 is a stale CDN answer, not a removal
    expect_page: bool = False


@dataclass
class OutboxTask:
    """An RSTUF task that was accepted but has not been seen to reach SUCCESS."""

    task_id: str
    action: str  # "add" or "remove"
    paths: list[str]
    published: bool  # False: sent with publish_artifacts=false, needs a publish
    sent_at: float  # epoch seconds


@dataclass
class Outbox:
    """Changes the mirror owes RSTUF.

    `dirty` holds target paths whose current state (the bytes on disk, or
    absence) RSTUF has not been told yet; the artifact is computed from disk
    when it is sent, so only a path's final state is ever delivered.
    """

    dirty: set[str] = field(default_factory=set)
    tasks: list[OutboxTask] = field(default_factory=list)

    def in_flight_paths(self) -> set[str]:
        return {path for task in self.tasks for path in task.paths}

    def __len__(self) -> int:
        return len(self.dirty | self.in_flight_paths())


@dataclass
class State:
    """Everything a run needs to resume; see README "state.json"."""

    serial: int | None = None  # last changelog serial fully applied; None: no first sync yet
    pending: dict[str, PendingProject] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=Outbox)
    # hash-prefixed copies no longer current, by served-relative path -> epoch retired
    retired: dict[str, float] = field(default_factory=dict)
    # a full sync (first sync or --full-check) started and must be finished first
    full_sync_in_progress: bool = False
    # the root index may lag the pages (a run died between them); rebuild it
    root_stale: bool = False

    def to_json(self) -> dict:
        return {
            "schema": STATE_SCHEMA,
            "serial": self.serial,
            "pending": {
                name: {
                    "display_name": p.display_name,
                    "serial": p.serial,
                    "expect_page": p.expect_page,
                }
                for name, p in sorted(self.pending.items())
            },
            "outbox": {
                "dirty": sorted(self.outbox.dirty),
                "tasks": [
                    {
                        "task_id": t.task_id,
                        "action": t.action,
                        "paths": t.paths,
                        "published": t.published,
                        "sent_at": t.sent_at,
                    }
                    for t in self.outbox.tasks
                ],
            },
            "retired": dict(sorted(self.retired.items())),
            "full_sync_in_progress": self.full_sync_in_progress,
            "root_stale": self.root_stale,
        }


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _state_from_json(doc: object) -> State:
    _require(isinstance(doc, dict), "not a JSON object")
    assert isinstance(doc, dict)
    schema = doc.get("schema")
    if schema != STATE_SCHEMA:
        raise StateError(
            f"unknown schema version {schema!r} (this tool reads {STATE_SCHEMA}); "
            "use the pypi_mirror.py release that wrote it"
        )
    serial = doc.get("serial")
    _require(serial is None or (type(serial) is int and serial >= 0), "bad 'serial'")
    pending_doc = doc.get("pending", {})
    _require(isinstance(pending_doc, dict), "bad 'pending'")
    pending = {}
    for name, entry in pending_doc.items():
        _require(isinstance(entry, dict), f"bad pending entry {name!r}")
        display, p_serial = entry.get("display_name"), entry.get("serial")
        _require(isinstance(display, str) and type(p_serial) is int, f"bad pending {name!r}")
        _require(project_dir_name(display) == name, f"pending name {name!r} does not match")
        expect_page = entry.get("expect_page", False)
        _require(isinstance(expect_page, bool), f"bad pending {name!r}")
        pending[name] = PendingProject(display, p_serial, expect_page)
    outbox_doc = doc.get("outbox", {})
    _require(isinstance(outbox_doc, dict), "bad 'outbox'")
    dirty = outbox_doc.get("dirty", [])
    _require(isinstance(dirty, list) and all(map(_is_target, dirty)), "bad 'outbox.dirty'")
    tasks = []
    for task in outbox_doc.get("tasks", []):
        _require(isinstance(task, dict), "bad outbox task")
        tasks.append(
            OutboxTask(
                task_id=str(task["task_id"]),
                action=task["action"],
                paths=list(task["paths"]),
                published=bool(task["published"]),
                sent_at=float(task["sent_at"]),
            )
        )
        _require(task["action"] in ("add", "remove"), "bad outbox task action")
        _require(all(map(_is_target, task["paths"])), "bad outbox task paths")
    retired_doc = doc.get("retired", {})
    _require(isinstance(retired_doc, dict), "bad 'retired'")
    retired = {}
    for path, when in retired_doc.items():
        _require(_is_retired_copy(path) and isinstance(when, int | float), "bad 'retired'")
        retired[path] = float(when)
    flags = {key: doc.get(key, False) for key in ("full_sync_in_progress", "root_stale")}
    _require(all(isinstance(value, bool) for value in flags.values()), "bad flags")
    return State(serial, pending, Outbox(set(dirty), tasks), retired, **flags)


_TARGET = re.compile(r"^(index\.html|simple/[a-z0-9]+(-[a-z0-9]+)*/index\.html)$")
_RETIRED = re.compile(
    r"^([0-9a-f]{64}\.index\.html|simple/[a-z0-9]+(-[a-z0-9]+)*/[0-9a-f]{64}\.index\.html)$"
)


def _is_target(path: object) -> bool:
    return isinstance(path, str) and bool(_TARGET.match(path))


def _is_retired_copy(path: object) -> bool:
    return isinstance(path, str) and bool(_RETIRED.match(path))


def load_state(path: Path) -> State:
    """Read state.json; a missing file is a fresh state, a damaged one is a StateError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return State()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return _state_from_json(json.loads(raw))
    except StateError as exc:
        raise StateError(f"{path}: {exc}") from exc
    except (ValueError, KeyError, TypeError, InvalidProjectName) as exc:
        raise StateError(
            f"{path} is corrupt ({exc}); restore it from a backup, or move it away and "
            "run with --full-check to rebuild it from the mirror and PyPI"
        ) from exc


def save_state(path: Path, state: State) -> None:
    """Replace state.json atomically and durably (temp file beside it, fsync, rename)."""
    data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
    path = path.absolute()
    atomic_write(path, data, staging_dir=path.parent, prefix=_state_temp_prefix(path))


def _state_temp_prefix(path: Path) -> str:
    """Temp files of `path`'s saves are named after it, so that only they are ever cleared."""
    return f".{path.name}.tmp-"


def clear_state_temps(path: Path) -> int:
    """Delete the temp files of state saves that a killed run left beside `path`.

    The state file may live in a directory shared with anything (the default is
    the working directory), so only names `save_state` makes are touched.
    """
    path = path.absolute()
    removed = 0
    for temp in path.parent.glob(glob.escape(_state_temp_prefix(path)) + "*"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed += 1
    return removed
