"""What keeps an operator's mistake from becoming a wrong mirror reported as success.

A state file and its mirror know each other. The state records the mirror's
id, the directory and the upstream it was last run with; the mirror directory
holds the same id in a small marker file, ``.mirror-id``, outside the served
tree. Before a run changes anything it finds its state file (`locate_state`:
the working directory's ``state.json``, or the one the previous default left
inside the mirror directory, moved once), reads what is on disk (`read_mirror_facts`), and
the pure checks below decide: go on, record the identity (a new mirror, a state
written by release 1.0, a mirror that was moved), or refuse with one line that
says what is wrong and what to do.

The circuit breaker (`CircuitBreaker`, `Halt`) stops a run that would go on
hammering an upstream failing as a whole.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pypi_index_mirror.mirror.roots import ROOT_FOOTER, ROOT_HEADER, render_json_root_lines
from pypi_index_mirror.mirror.state import State, StateError, load_state, looks_like_state
from pypi_index_mirror.mirror.store import DEFAULT_STATE_FILE, MirrorLayout, atomic_write, fsync_dir
from pypi_index_mirror.ops.cli import ToolError, UsageError, stop_requested

log = logging.getLogger(__name__)

# What the tool's own root page weighs when it lists no project.
EMPTY_ROOT_SIZE = len(ROOT_HEADER) + len(ROOT_FOOTER)
EMPTY_JSON_ROOT_SIZE = len(b"".join(render_json_root_lines([])))
RECOVERY = "see README, Recovery"


class MirrorMismatch(ToolError):
    """The state file and the mirror directory (or the upstream) do not belong together."""


class StateAhead(ToolError):
    """The state's serial is ahead of the upstream's changelog: it cannot be this mirror's."""


# --- what is on disk


@dataclass(frozen=True)
class MirrorFacts:
    """What a run found where the mirror should be, before it changed anything."""

    directory: Path  # absolute, symlinks resolved
    exists: bool
    marker: str | None  # the id in the marker file; None: no marker
    served_tree: bool  # pypi_mirror/ exists
    root_index: bool  # pypi_mirror/index.html (or a JSON-only mirror's JSON root) exists
    root_lists_projects: bool  # ... and is larger than a root page listing none
    project_pages: bool  # pypi_mirror/simple/ holds at least one project directory

    @property
    def holds_a_mirror(self) -> bool:
        return self.root_index or self.project_pages


def read_mirror_facts(layout: MirrorLayout) -> MirrorFacts:
    """Look at the mirror directory (a few stat calls and the marker's 33 bytes)."""
    # the HTML root, or a JSON-only mirror's (--simple-format json)
    root_page, empty_size = layout.root_page, EMPTY_ROOT_SIZE
    if not root_page.is_file() and layout.json_root_page.is_file():
        root_page, empty_size = layout.json_root_page, EMPTY_JSON_ROOT_SIZE
    try:
        root_size = root_page.stat().st_size if root_page.is_file() else None
    except OSError:
        root_size = None
    return MirrorFacts(
        directory=layout.root.resolve(),
        exists=layout.root.is_dir(),
        marker=read_marker(layout),
        served_tree=layout.served_dir.is_dir(),
        root_index=root_size is not None,
        root_lists_projects=root_size is not None and root_size > empty_size,
        project_pages=has_project_pages(layout),
    )


def has_project_pages(layout: MirrorLayout) -> bool:
    try:
        with os.scandir(layout.simple_dir) as entries:
            return any(entry.is_dir() for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def read_marker(layout: MirrorLayout) -> str | None:
    """The mirror id in the marker file, None if there is none; MirrorMismatch if damaged."""
    path = layout.marker_file
    try:
        text = path.read_bytes()[:100].decode("ascii").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        text = f"unreadable: {exc}"
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    raise MirrorMismatch(
        f"{path} is damaged ({text[:40]!r}): restore it from a backup, or delete it and "
        "run once with --full-check to check the mirror and mark it again"
    )


def write_marker(layout: MirrorLayout, mirror_id: str) -> None:
    """Write the marker (atomically: a reader never sees half an id)."""
    atomic_write(
        layout.marker_file,
        f"{mirror_id}\n".encode(),
        staging_dir=layout.staging_dir,
        prefix=".mirror-id.tmp-",
    )


# --- where the state is


def locate_state(state_file: Path, given: bool, layout: MirrorLayout, move: bool = True) -> Path:
    """The state file a run reads: `state_file`, once the previous default's is moved there.

    Release 1.1 kept state.json inside the mirror directory by default; the default
    is the working directory's ``state.json`` again, beside the mirror directory
    (messages say "the previous default", not who wrote the file).
    Without ``--state`` (`given` False), a run that finds the mirror directory's
    state.json and none at the default moves it there (a rename, or across
    filesystems a durable copy, then the unlink) and logs where the state now lives,
    once. `move` False (a dry run, a plain audit) moves nothing and reads it where it
    is. Raises UsageError for a state file inside the served tree, and MirrorMismatch
    when both places hold a different state (the line gives the ``mv`` to run).
    """
    refuse_state_in_served_tree(state_file, given, layout)
    previous = layout.previous_state_file.absolute()
    if given or not previous.is_file() or same_file(previous, state_file):
        return state_file
    if state_file.exists():
        if state_file.is_file() and previous.read_bytes() == state_file.read_bytes():
            if move:  # a move across filesystems was cut between its copy and its unlink
                previous.unlink()
                fsync_dir(previous.parent)
            return state_file
        raise MirrorMismatch(two_states(state_file, previous, layout))
    where = state_file.absolute()
    if not move:
        log.warning(
            "the state is still at %s, the previous default inside the mirror directory; the "
            "next run moves it to %s",
            previous,
            where,
        )
        return previous
    move_file(previous, where)
    log.warning(
        "the state now lives at %s, the default (moved from %s, the previous default "
        "inside the mirror directory)",
        where,
        previous,
    )
    return state_file


def refuse_state_in_served_tree(state_file: Path, given: bool, layout: MirrorLayout) -> None:
    """Refuse a state file anyone could download from the web server (UsageError)."""
    served = layout.served_dir.resolve()
    place = state_file.resolve()
    if place != served and not place.is_relative_to(served):
        return
    if given:
        raise UsageError(
            f"--state {state_file} is inside the served tree {served}, where anyone could "
            "download it: give a path outside it"
        )
    raise UsageError(
        f"the default state file {place} (state.json in the working directory) is inside the "
        f"served tree {served}: run from the directory that holds the mirror directory, or "
        "give --state"
    )


def same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def move_file(source: Path, destination: Path) -> None:
    """Move `source` to `destination` durably; a crash leaves one of them, or both equal."""
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        data = source.read_bytes()  # another filesystem: copy durably, then unlink
        atomic_write(
            destination, data, staging_dir=destination.parent, prefix=f".{destination.name}.tmp-"
        )
        source.unlink()
    fsync_dir(source.parent)
    fsync_dir(destination.parent)


def two_states(state_file: Path, previous: Path, layout: MirrorLayout) -> str:
    """The refusal for a state at the default and another at the previous default."""
    try:
        marker: str | None = read_marker(layout)
    except MirrorMismatch:
        marker = None
    where = state_file.absolute()
    return (
        f"two state files: {where} ({describe_state(where, marker)}) and {previous} "
        f"({describe_state(previous, marker)}, the previous default): keep this "
        f"mirror's. To use the mirror directory's: mv {where} {where}.old && mv {previous} "
        f"{where}; to keep {where}: mv {previous} {previous}.old"
    )


def describe_state(path: Path, marker: str | None) -> str:
    """Which mirror a state file says it is, and how far it got, for a refusal."""
    try:
        state = load_state(path)
    except StateError:
        return "unreadable"
    mine = " (this mirror)" if marker is not None and state.mirror_id == marker else ""
    return f"mirror {state.mirror_id}{mine}, serial {state.serial}"


def state_elsewhere(state_file: Path, layout: MirrorLayout) -> Path | None:
    """A state file at the other default place than `state_file`, for a refusal to name."""
    for candidate in (DEFAULT_STATE_FILE.absolute(), layout.previous_state_file.absolute()):
        if (
            candidate.is_file()
            and not same_file(candidate, state_file)
            and looks_like_state(candidate)
        ):
            return candidate
    return None


# --- the checks (pure)


def canonical_url(url: str) -> str:
    """The form in which two spellings of one base URL compare equal."""
    parts = urllib.parse.urlsplit(url.strip())
    return urllib.parse.urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", "")
    )


@dataclass(frozen=True)
class Verdict:
    """A run may go on; what it must record first."""

    mirror_id: str
    write_marker: bool  # the marker is missing: write it before the state
    upstream_changed: bool  # --full-check moves the mirror to another upstream
    notes: tuple[str, ...] = ()  # routine events to log (a migration, a move)
    warnings: tuple[str, ...] = ()  # repairs the operator asked for with --full-check


def check_identity(
    state: State,
    facts: MirrorFacts,
    upstream: str,
    full_check: bool,
    state_file: Path,
    new_id: str,
    state_elsewhere: Path | None = None,
) -> Verdict:
    """Decide whether `state` may drive the mirror `facts` describe against `upstream`.

    Raises MirrorMismatch for a state of another mirror, of another upstream
    (unless --full-check moves the mirror there), for a mirror that lost pages
    its state says are there, or for a mirror with pages but no state (both
    repaired by --full-check; a state file at `state_elsewhere` is named then).
    `new_id` is used if the mirror has no id yet.
    """
    notes: list[str] = []
    warnings: list[str] = []
    has_state = state.read_schema is not None
    here = facts.directory
    if state.mirror_id is not None and facts.marker not in (None, state.mirror_id):
        raise MirrorMismatch(
            f"{state_file} is the state of mirror {state.mirror_id} (last run in "
            f"{state.mirror_dir}), but {here} is mirror {facts.marker}: give this mirror's "
            f"own state (--state; default {DEFAULT_STATE_FILE} in the working directory), or "
            "the --mirror-dir of that state"
        )
    upstream_changed = False
    if state.upstream is not None and canonical_url(state.upstream) != upstream:
        if not full_check:
            raise MirrorMismatch(
                f"{state_file} belongs to a mirror of {state.upstream}, not {upstream}: "
                f"give --pypi-url {state.upstream}; to move this mirror to {upstream}, run "
                "once with --full-check (every page is checked against it)"
            )
        upstream_changed = True
        warnings.append(
            f"moving the mirror from {state.upstream} to {upstream} (--full-check): "
            "every page is checked against it"
        )
    lost = lost_pages(state, facts)
    if lost is not None:
        if not full_check:
            advice = (
                "restore the mirror from a backup, or rebuild it with --full-check (it "
                "fetches every page again and registers each with RSTUF)"
                if state.serial is not None
                else f"delete {state_file} to start the first sync over"
            )
            raise MirrorMismatch(
                f"{lost}, but {state_file} says {_claims(state)}: check --mirror-dir "
                f"(an unmounted volume?); {advice}"
            )
        warnings.append(f"{lost}: --full-check fetches every page again")
    if not has_state and facts.holds_a_mirror:
        if not full_check and state_elsewhere is not None:
            raise MirrorMismatch(
                f"{here} holds a mirror but there is no state file {state_file}; "
                f"{state_elsewhere} is one: give --state {state_elsewhere}, or move it "
                f"(mv {state_elsewhere} {state_file.absolute()})"
            )
        if not full_check:
            raise MirrorMismatch(
                f"{here} holds a mirror but there is no state file {state_file}: give "
                "--state if it lives elsewhere; to rebuild a lost state run --full-check, "
                f"then --audit --repair to bring RSTUF in step ({RECOVERY})"
            )
        warnings.append(
            f"no state file {state_file}: rebuilding it from the mirror and PyPI "
            f"(--full-check); then run --audit --repair to bring RSTUF in step ({RECOVERY})"
        )
    if state.read_schema == 1:
        notes.append(f"{state_file} was written by release 1.0: recording its mirror and upstream")
    elif state.mirror_id is not None and state.mirror_dir not in (None, str(here)):
        notes.append(f"mirror {state.mirror_id} moved from {state.mirror_dir} to {here}")
    mirror_id = state.mirror_id or facts.marker or new_id
    return Verdict(
        mirror_id=mirror_id,
        write_marker=facts.marker is None,
        upstream_changed=upstream_changed,
        notes=tuple(notes),
        warnings=tuple(warnings),
    )


def lost_pages(state: State, facts: MirrorFacts) -> str | None:
    """What the mirror lost that its state says it has, or None.

    A state with an id expects its marker; a synced state (a serial) also its
    served tree, its root index and, if the root lists projects, their pages.
    A partial loss inside ``simple/`` is what --full-check and --audit find.
    """
    here = facts.directory
    if not facts.exists:
        if state.mirror_id is None and state.serial is None:
            return None  # nothing was there yet
        return f"mirror directory {here} does not exist"
    if state.mirror_id is not None and facts.marker is None:
        return f"{here} has no marker file .mirror-id (it is not mirror {state.mirror_id})"
    if state.serial is None:
        return None
    if not facts.served_tree:
        return f"{here} has no served tree pypi_mirror/"
    if not facts.root_index:
        return f"{here} has no root index (pypi_mirror/index.html or simple/index.v1_json)"
    if facts.root_lists_projects and not facts.project_pages:
        return f"{here}/pypi_mirror/simple/ holds no page although its root index lists projects"
    return None


def _claims(state: State) -> str:
    if state.serial is not None:
        return f"the mirror is synced at serial {state.serial}"
    return f"a first sync of mirror {state.mirror_id} is under way"


def check_serial(serial: int | None, last_serial: int, upstream: str, state_file: Path) -> None:
    """Refuse a state whose serial the upstream has not reached: it is not this mirror's.

    Applying the changelog from there would skip every change in between, silently.
    """
    if serial is not None and serial > last_serial:
        raise StateAhead(
            f"{state_file} is at serial {serial}, ahead of {upstream}, whose changelog "
            f"ends at {last_serial}: it is the state of another index, or was edited; "
            "restore this mirror's state from a backup, or move it away and run "
            f"--full-check, then --audit --repair ({RECOVERY})"
        )


# --- the circuit breaker


class CircuitBreaker:
    """Trips once `limit` page requests have failed in a row; any success resets the count.

    Fed by every attempt of every project, so a single project failing its
    retries never trips it while others succeed, but an upstream answering
    nothing useful does within `limit` requests. A limit of 0 never trips.
    Used from the fetch engine's one thread: no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.tripped = False

    def record(self, ok: bool) -> bool:
        """Count one request's outcome; True exactly once, for the failure that trips it."""
        if ok:
            self.streak = 0
            return False
        self.streak += 1
        if self.limit and not self.tripped and self.streak >= self.limit:
            self.tripped = True
            return True
        return False


class FetchHalted(Exception):
    """Fetching stopped (circuit breaker, signal) before this page was fetched."""


class Halt:
    """Tells the fetching to stop: the engine at its next turn, a retry's pause at once.

    A signal held back by `ops.cli.deferred_stops` halts them too: they
    read its flag themselves, so no lock is ever taken in a signal handler.
    """

    POLL = 0.05  # seconds: how soon a waiting thread sees a signal

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def clear(self) -> None:
        """Re-arm: a --watch process's next cycle fetches again (with a new breaker)."""
        self.reason = None
        self._event.clear()

    def check(self) -> None:
        if self._event.is_set() or stop_requested() is not None:
            raise FetchHalted(self.reason or "stopped by a signal")

    def sleep(self, seconds: float) -> None:
        """A retry's pause that ends, raising FetchHalted, as soon as the run halts."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._event.wait(min(left, self.POLL))
