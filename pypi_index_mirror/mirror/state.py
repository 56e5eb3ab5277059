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
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pypi_index_mirror.mirror.filters import ProjectFilter
from pypi_index_mirror.mirror.store import InvalidProjectName, atomic_write, project_dir_name
from pypi_index_mirror.ops.cli import ToolError
from pypi_index_mirror.sync.revalidate import Cursor

STATE_SCHEMA = 2
# Schema 1 (release 1.0) had no identity: read once, then written as schema 2 (see `State`).
READABLE_SCHEMAS = (1, STATE_SCHEMA)
_MIRROR_ID = re.compile(r"^[0-9a-f]{32}$")


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
    """An add or remove RSTUF accepted, or may have accepted, and not yet seen to succeed.

    In `Outbox.tasks` it has RSTUF's task id; in `Outbox.uncertain` the id is
    "" (never learnt: the answer was lost, or the run was killed before it was
    saved) or the id of a task that failed.
    """

    task_id: str
    action: str  # "add" or "remove"
    paths: list[str]
    sent_at: float  # epoch seconds
    digests: dict[str, str] = field(default_factory=dict)  # path -> blake2b-256 sent (adds)


@dataclass
class PublishTask:
    """A publish the mirror posted, polled until it reaches a final state."""

    task_id: str
    sent_at: float  # epoch seconds


@dataclass
class Outbox:
    """Changes the mirror owes RSTUF, and every RSTUF task it started for them.

    `dirty` holds target paths whose current state (the bytes on disk, or
    absence) RSTUF has not been told yet; the artifact is computed from disk
    when it is sent, so only a path's final state is ever delivered. `signed`
    keeps, for each target owed, the digest RSTUF signs until it confirms a
    newer state ("": no such target at RSTUF): that copy, those in flight and
    the current one are all a TUF client can be sent to.
    """

    dirty: set[str] = field(default_factory=set)
    tasks: list[OutboxTask] = field(default_factory=list)
    publishes: list[PublishTask] = field(default_factory=list)
    uncertain: list[OutboxTask] = field(default_factory=list)
    signed: dict[str, str] = field(default_factory=dict)

    def in_flight_paths(self) -> set[str]:
        return {path for task in self.tasks for path in task.paths}

    def owed(self) -> set[str]:
        """Targets whose current state RSTUF has not confirmed."""
        return self.dirty | self.in_flight_paths()

    def owe(self, changed: Mapping[str, str | None]) -> None:
        """Targets changed; `changed` maps each to the digest RSTUF signed before (None: none).

        Only the first change while a target is owed records what RSTUF signs:
        later ones replace versions RSTUF never saw.
        """
        in_flight: set[str] | None = None
        for target, signed_digest in changed.items():
            if target not in self.signed and target not in self.dirty:
                if in_flight is None:
                    in_flight = self.in_flight_paths()  # once per batch, not per target
                if target not in in_flight:
                    self.signed[target] = signed_digest or ""
            self.dirty.add(target)

    def confirm(self, target: str, digest: str | None) -> str | None:
        """RSTUF now signs `digest` (None: removed) for `target`; return what it signed before.

        None when that was not recorded (a state file from before it was).
        """
        before = self.signed.pop(target, None)
        if target in self.dirty:  # changed again since (a path is in one task at a time)
            self.signed[target] = digest or ""
        return before

    def held_digests(self) -> dict[str, set[str]]:
        """For each target, the digests RSTUF signs or may soon sign: their copies stay."""
        held: dict[str, set[str]] = {}
        for target, digest in self.signed.items():
            if digest:
                held.setdefault(target, set()).add(digest)
        for task in (*self.tasks, *self.uncertain):
            for target, digest in task.digests.items():
                held.setdefault(target, set()).add(digest)
        return held

    def clear(self) -> int:
        """Forget everything owed (running without RSTUF); return how many targets were."""
        owed = len(self)
        self.dirty.clear()
        self.tasks.clear()
        self.publishes.clear()
        self.uncertain.clear()
        self.signed.clear()
        return owed

    def __len__(self) -> int:
        return len(self.owed())


@dataclass
class State:
    """Everything a run needs to resume; see docs/state.md."""

    serial: int | None = None  # last changelog serial fully applied; None: no first sync yet
    pending: dict[str, PendingProject] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=Outbox)
    # hash-prefixed copies no longer current, by served-relative path -> epoch retired
    retired: dict[str, float] = field(default_factory=dict)
    # a full sync (first sync or --full-check) started and must be finished first
    full_sync_in_progress: bool = False
    # the root index may lag the pages (a run died between them); rebuild it
    root_stale: bool = False
    # RSTUF's TUF metadata was seen to sign the root index: the bootstrap import is done,
    # so deliveries can no longer collide with it (checked once, with a metadata URL)
    bootstrap_seen: bool = False
    # the --include/--exclude set the mirror was last brought in line with
    filters: ProjectFilter = field(default_factory=ProjectFilter)
    # the page forms the mirror holds ("html", "json"); a state from before JSON pages: html
    formats: tuple[str, ...] = ("html",)
    # The identity of the mirror this state belongs to (see ``mirror.safety``): the id also
    # written in the mirror's marker file, the directory and the upstream it was last
    # run with. None only before a state's first run (or in a schema-1 file).
    mirror_id: str | None = None
    mirror_dir: str | None = None
    upstream: str | None = None
    # the full sync in progress is a first sync into an empty mirror: RSTUF learns its
    # pages from generate_csv.py, so they do not go to the outbox
    first_sync: bool = False
    # where --revalidate-period's walk through the mirror's projects stands
    revalidation: Cursor = field(default_factory=Cursor)
    # not saved: the schema of the file this state was read from (None: there was no file)
    read_schema: int | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        return {
            "schema": STATE_SCHEMA,
            "mirror_id": self.mirror_id,
            "mirror_dir": self.mirror_dir,
            "upstream": self.upstream,
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
                # every task is sent unpublished and covered by the mirror's publishes
                # (schema 1's "published" flag is read as nothing more)
                "tasks": [_task_json(t) for t in self.outbox.tasks],
                "publishes": [
                    {"task_id": p.task_id, "sent_at": p.sent_at} for p in self.outbox.publishes
                ],
                "uncertain": [_task_json(t) for t in self.outbox.uncertain],
                "signed": dict(sorted(self.outbox.signed.items())),
            },
            "retired": dict(sorted(self.retired.items())),
            "full_sync_in_progress": self.full_sync_in_progress,
            "first_sync": self.first_sync,
            "root_stale": self.root_stale,
            "bootstrap_seen": self.bootstrap_seen,
            "filters": self.filters.to_json(),
            "formats": list(self.formats),
            "revalidation": self.revalidation.to_json(),
        }


def _task_json(task: OutboxTask) -> dict:
    return {
        "task_id": task.task_id,
        "action": task.action,
        "paths": task.paths,
        "sent_at": task.sent_at,
        "digests": dict(sorted(task.digests.items())),
    }


def _task_from_json(doc: object, needs_id: bool) -> OutboxTask:
    _require(isinstance(doc, dict), "bad outbox task")
    assert isinstance(doc, dict)
    task_id, action, paths = doc.get("task_id", ""), doc.get("action"), doc.get("paths")
    _require(isinstance(task_id, str) and (bool(task_id) or not needs_id), "bad outbox task id")
    _require(action in ("add", "remove"), "bad outbox task action")
    _require(isinstance(paths, list) and all(map(_is_target, paths)), "bad outbox task paths")
    digests = doc.get("digests", {})
    _require(
        isinstance(digests, dict)
        and all(_is_target(p) and _is_digest(d) for p, d in digests.items()),
        "bad outbox task digests",
    )
    return OutboxTask(task_id, action, list(paths), float(doc["sent_at"]), dict(digests))


def _outbox_from_json(doc: object) -> Outbox:
    _require(isinstance(doc, dict), "bad 'outbox'")
    assert isinstance(doc, dict)
    dirty = doc.get("dirty", [])
    _require(isinstance(dirty, list) and all(map(_is_target, dirty)), "bad 'outbox.dirty'")
    tasks = [_task_from_json(task, needs_id=True) for task in doc.get("tasks", [])]
    uncertain = [_task_from_json(task, needs_id=False) for task in doc.get("uncertain", [])]
    publishes = []
    for publish in doc.get("publishes", []):
        _require(isinstance(publish, dict), "bad outbox publish")
        task_id = publish.get("task_id")
        _require(isinstance(task_id, str) and bool(task_id), "bad outbox publish id")
        publishes.append(PublishTask(task_id, float(publish["sent_at"])))
    signed = doc.get("signed", {})
    _require(
        isinstance(signed, dict)
        and all(_is_target(p) and (d == "" or _is_digest(d)) for p, d in signed.items()),
        "bad 'outbox.signed'",
    )
    return Outbox(set(dirty), tasks, publishes, uncertain, dict(signed))


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _state_from_json(doc: object) -> State:
    _require(isinstance(doc, dict), "not a JSON object")
    assert isinstance(doc, dict)
    schema = doc.get("schema")
    if schema not in READABLE_SCHEMAS or type(schema) is not int:
        raise StateError(
            f"unknown schema version {schema!r} (this tool reads "
            f"{' and '.join(map(str, READABLE_SCHEMAS))}); use the pypi_mirror.py release "
            "that wrote it"
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
    outbox = _outbox_from_json(doc.get("outbox", {}))
    retired_doc = doc.get("retired", {})
    _require(isinstance(retired_doc, dict), "bad 'retired'")
    retired = {}
    for path, when in retired_doc.items():
        _require(_is_retired_copy(path) and isinstance(when, int | float), "bad 'retired'")
        retired[path] = float(when)
    flag_names = ("full_sync_in_progress", "root_stale", "first_sync", "bootstrap_seen")
    flags = {key: doc.get(key, False) for key in flag_names}
    _require(all(isinstance(value, bool) for value in flags.values()), "bad flags")
    filters = ProjectFilter.from_json(doc.get("filters", {}))
    formats = doc.get("formats", ["html"])
    _require(
        isinstance(formats, list) and bool(formats) and set(formats) <= {"html", "json"},
        "bad 'formats'",
    )
    identity = {key: doc.get(key) for key in ("mirror_id", "mirror_dir", "upstream")}
    if schema == 1:
        _require(all(value is None for value in identity.values()), "identity in a schema 1 file")
    _require(identity["mirror_id"] is None or _is_mirror_id(identity["mirror_id"]), "bad mirror_id")
    _require(all(v is None or isinstance(v, str) for v in identity.values()), "bad identity")
    state = State(
        serial,
        pending,
        outbox,
        retired,
        **flags,
        **identity,
        filters=filters,
        formats=tuple(formats),
        revalidation=Cursor.from_json(doc.get("revalidation", {})),
    )
    state.read_schema = schema
    return state


def new_mirror_id() -> str:
    """A random id for a new mirror, written in its state and in its marker file."""
    return secrets.token_hex(16)


def _is_mirror_id(value: object) -> bool:
    return isinstance(value, str) and bool(_MIRROR_ID.match(value))


# Targets: the two roots (index.html; simple/index.v1_json) and each project's two pages.
_NAME = r"[a-z0-9]+(-[a-z0-9]+)*"
_TARGET = re.compile(rf"^(index\.html|simple/index\.v1_json|simple/{_NAME}/index\.(html|v1_json))$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_RETIRED = re.compile(
    rf"^([0-9a-f]{{64}}\.index\.html|simple/[0-9a-f]{{64}}\.index\.v1_json"
    rf"|simple/{_NAME}/[0-9a-f]{{64}}\.index\.(html|v1_json))$"
)


def _is_target(path: object) -> bool:
    return isinstance(path, str) and bool(_TARGET.match(path))


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST.match(value))


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


def state_bytes(doc: dict[str, object]) -> bytes:
    """state.json's bytes: one top-level key a line, each value compact.

    Readable and greppable by key, and encoded by the json module's C encoder
    (an indented dump is encoded in Python, ten times slower: a state holding
    a day's retired copies, tens of thousands, is saved several times a run).
    """
    lines = (
        f" {json.dumps(key)}: {json.dumps(doc[key], sort_keys=True, separators=(',', ':'))}"
        for key in sorted(doc)
    )
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def save_state(path: Path, state: State) -> None:
    """Replace state.json atomically and durably (temp file beside it, fsync, rename)."""
    data = state_bytes(state.to_json())
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


def looks_like_state(path: Path) -> bool:
    """Whether `path` is a JSON object with this tool's keys (not someone else's state.json)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "schema" in doc and "serial" in doc
