"""The mirror on disk: layout, names, atomic writes, hashing, the lock and state.json.

Everything here is shared by ``pypi_mirror.py`` and ``generate_csv.py`` so that
each rule (how a name becomes a path, how bytes are hashed for TUF, how a file
is replaced without a reader ever seeing half of it) lives in exactly one place.
Nothing in this module talks to the network.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "1.0.0"

# --- names -----------------------------------------------------------------

# PEP 508 / warehouse's `projects_valid_name` constraint: ASCII letters and
# digits, with `.`, `_` and `-` allowed only inside the name.
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# A directory name must fit the filesystem's 255-byte limit together with the
# 64-hex-digit hash prefix of TUF's consistent-snapshot copies.
MAX_NAME_LENGTH = 150


class InvalidProjectName(ValueError):
    """An upstream project name that must never become a path."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid project name {name!r}: {reason}")
        self.name = name
        self.reason = reason


def normalize_name(name: str) -> str:
    """PEP 503 normalization (no validation: see `project_dir_name`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dir_name(name: str) -> str:
    """Return the normalized name of a valid project name, or raise InvalidProjectName.

    This is the only gate between an upstream string and a path: the result
    contains only ``[a-z0-9-]``, so it can never be ``.``, ``..``, absolute or
    contain a separator.
    """
    if not isinstance(name, str) or not name:
        raise InvalidProjectName(str(name), "empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidProjectName(name[:40] + "...", f"longer than {MAX_NAME_LENGTH} characters")
    if not _VALID_NAME.fullmatch(name):
        raise InvalidProjectName(name, "not a PEP 508 name (ASCII letters, digits, '.', '_', '-')")
    return normalize_name(name)


# --- hashing -----------------------------------------------------------------

TUF_HASH_ALGORITHM = "blake2b-256"
HASH_FACTORIES: dict[str, Callable[[], hashlib._Hash]] = {
    "blake2b-256": lambda: hashlib.blake2b(digest_size=32),
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """Length and hex digest of exactly the bytes a file holds (what TUF signs)."""

    length: int
    algorithm: str
    hexdigest: str


def digest_bytes(data: bytes, algorithm: str = TUF_HASH_ALGORITHM) -> FileDigest:
    hasher = HASH_FACTORIES[algorithm]()
    hasher.update(data)
    return FileDigest(len(data), algorithm, hasher.hexdigest())


def digest_file(path: Path | str, algorithm: str = TUF_HASH_ALGORITHM) -> FileDigest:
    """Hash a file's bytes in 1 MiB reads (hashlib releases the GIL on these)."""
    hasher = HASH_FACTORIES[algorithm]()
    length = 0
    with open(path, "rb", buffering=0) as handle:  # no second buffer: ~30% more files/s
        while chunk := handle.read(_READ_CHUNK):
            hasher.update(chunk)
            length += len(chunk)
    return FileDigest(length, algorithm, hasher.hexdigest())


# --- layout ------------------------------------------------------------------

# Both scripts' defaults: generate_csv.py must find what pypi_mirror.py wrote.
DEFAULT_MIRROR_DIR = Path("pypi-index-mirror")
DEFAULT_STATE = Path("state.json")
PAGE_NAME = "index.html"
_PREFIXED_PAGE = re.compile(r"^[0-9a-f]{64}\.index\.html$")


@dataclass(frozen=True)
class MirrorLayout:
    """Where everything lives under ``--mirror-dir``.

    Only ``pypi_mirror/`` is served. Temp files are made in ``.staging/`` (same
    filesystem, so the final rename is atomic) so the served tree never holds one.
    """

    root: Path

    @property
    def served_dir(self) -> Path:
        return self.root / "pypi_mirror"

    @property
    def simple_dir(self) -> Path:
        return self.served_dir / "simple"

    @property
    def root_page(self) -> Path:
        return self.served_dir / PAGE_NAME

    @property
    def staging_dir(self) -> Path:
        return self.root / ".staging"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def project_dir(self, normalized: str) -> Path:
        return self.simple_dir / normalized

    def project_page(self, normalized: str) -> Path:
        return self.simple_dir / normalized / PAGE_NAME

    def path_of_target(self, target: str) -> Path:
        return self.served_dir / target


def project_target(normalized: str) -> str:
    """The TUF target path of a project page (relative to ``pypi_mirror/``)."""
    return f"simple/{normalized}/{PAGE_NAME}"


ROOT_TARGET = PAGE_NAME


def prefixed_name(hexdigest: str, basename: str = PAGE_NAME) -> str:
    """Name of the consistent-snapshot copy a TUF client downloads."""
    return f"{hexdigest}.{basename}"


def target_of_copy(relative: str) -> str:
    """The target a hash-prefixed copy stands for (``simple/x/<hex>.index.html`` -> its page)."""
    directory, _, _ = relative.rpartition("/")
    return f"{directory}/{PAGE_NAME}" if directory else PAGE_NAME


def is_prefixed_copy(filename: str) -> bool:
    return bool(_PREFIXED_PAGE.match(filename))


def iter_targets(layout: MirrorLayout) -> Iterator[str]:
    """Yield every TUF target the mirror serves, sorted: ``index.html`` first.

    Streams directory entries instead of building a list of 700,000 paths.
    """
    if layout.root_page.is_file():
        yield ROOT_TARGET
    try:
        names = sorted(entry.name for entry in os.scandir(layout.simple_dir) if entry.is_dir())
    except FileNotFoundError:
        return
    simple = os.fspath(layout.simple_dir)  # str joins: Path objects cost 3x here
    for name in names:
        if os.path.isfile(f"{simple}/{name}/{PAGE_NAME}"):
            yield project_target(name)


# --- writing -----------------------------------------------------------------


def atomic_write(
    path: Path, data: bytes, staging_dir: Path, durable: bool = False, prefix: str = ".tmp-"
) -> None:
    """Replace `path` with `data` so that readers see the old or the new bytes, never a mix.

    The temp file (named `prefix`...) is created in `staging_dir` (same filesystem
    as `path`) and renamed over `path`. With `durable`, the file and its directory
    are fsynced; bulk page writes leave that to one `sync_filesystem` per batch instead.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=staging_dir, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_staging(staging_dir: Path) -> int:
    """Delete temp files an interrupted run left behind; return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(staging_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


_libc = None


def sync_filesystem(path: Path) -> None:
    """Make every write on `path`'s filesystem durable with one syncfs(2).

    One call per batch costs far less than an fsync per page; falls back to
    sync(2) where syncfs is not available.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    syncfs = getattr(_libc, "syncfs", None) if _libc else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


# --- the lock ----------------------------------------------------------------


class MirrorLocked(RuntimeError):
    def __init__(self, lock_path: Path, holder: str) -> None:
        super().__init__(
            f"another run holds the mirror lock {lock_path} ({holder}); "
            "wait for it to finish, then retry"
        )
        self.lock_path = lock_path


@contextlib.contextmanager
def mirror_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` or raise MirrorLocked at once.

    flock is released by the kernel when the process dies (even by SIGKILL),
    so a crashed run never leaves a stale lock behind.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown pid"
            raise MirrorLocked(lock_path, f"pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --- state.json ----------------------------------------------------------------

STATE_SCHEMA = 1


class StateError(RuntimeError):
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
    atomic_write(path, data, staging_dir=path.parent, durable=True, prefix=_state_temp_prefix(path))


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


# --- command line: shared by both scripts ------------------------------------------


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a `kind` number not below `minimum`, refused with a clear message."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def configure_logging(verbose: bool, quiet: bool) -> None:
    """One parseable line per event on stderr: UTC time, level, message.

    Replaces the root handlers, so calling a script's main() twice logs once.
    """
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
