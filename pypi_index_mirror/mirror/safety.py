"""What keeps an operator's mistake from becoming a wrong mirror reported as success.

A state file and its mirror know each other. The state records the mirror's
id, the directory and the upstream it was last run with; the mirror directory
holds the same id in a small marker file, ``.mirror-id``, outside the served
tree. Before a run changes anything it reads what is on disk
(`read_mirror_facts`), and the pure checks below decide: go on, record the
identity (a new mirror, a state written by release 1.0, a mirror that was
moved), or refuse with one line that says what is wrong and what to do.

The circuit breaker (`CircuitBreaker`, `Halt`) stops a run that would go on
hammering an upstream failing as a whole.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pypi_index_mirror.mirror.roots import ROOT_FOOTER, ROOT_HEADER, render_json_root_lines
from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import MirrorLayout, atomic_write
from pypi_index_mirror.ops.cli import ToolError, stop_requested

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
) -> Verdict:
    """Decide whether `state` may drive the mirror `facts` describe against `upstream`.

    Raises MirrorMismatch for a state of another mirror, of another upstream
    (unless --full-check moves the mirror there), for a mirror that lost pages
    its state says are there, or for a mirror with pages but no state (both
    repaired by --full-check). `new_id` is used if the mirror has no id yet.
    """
    notes: list[str] = []
    warnings: list[str] = []
    has_state = state.read_schema is not None
    here = facts.directory
    if state.mirror_id is not None and facts.marker not in (None, state.mirror_id):
        raise MirrorMismatch(
            f"{state_file} is the state of mirror {state.mirror_id} (last run in "
            f"{state.mirror_dir}), but {here} is mirror {facts.marker}: give this mirror's "
            f"own state (--state; default {here / 'state.json'}), or the --mirror-dir of "
            "that state"
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

    Fed by every attempt of every worker, so a single project failing its
    retries never trips it while others succeed, but an upstream answering
    nothing useful does within `limit` requests. A limit of 0 never trips.
    `shared` makes one that a forked helper process feeds too (fetch_helper).
    """

    def __init__(self, limit: int, cells: tuple[Any, Any, Any] | None = None) -> None:
        self.limit = limit
        # (streak, tripped, lock): plain values here, shared memory in `shared`
        self._streak, self._tripped, self._lock = cells or (
            SimpleNamespace(value=0),
            SimpleNamespace(value=0),
            threading.Lock(),
        )

    @property
    def streak(self) -> int:
        return self._streak.value

    @property
    def tripped(self) -> bool:
        return bool(self._tripped.value)

    def shared(self) -> CircuitBreaker:
        """The same breaker in memory that survives a fork: failures in a row count across
        both processes, and both see it tripped, whichever tripped it."""
        import multiprocessing  # only for the run that forks (see fetch_helper)

        return CircuitBreaker(
            self.limit,
            (
                multiprocessing.RawValue("q", self.streak),
                multiprocessing.RawValue("b", int(self.tripped)),
                multiprocessing.Lock(),
            ),
        )

    def record(self, ok: bool) -> bool:
        """Count one request's outcome; True exactly once, for the failure that trips it."""
        with self._lock:
            if ok:
                self._streak.value = 0
                return False
            self._streak.value += 1
            if self.limit and not self._tripped.value and self._streak.value >= self.limit:
                self._tripped.value = 1
                return True
            return False


class FetchHalted(Exception):
    """Fetching stopped (circuit breaker, signal) before this page was fetched."""


class Halt:
    """Tells the fetch threads to stop: at their next attempt, or at once if they wait.

    A signal held back by `cli_support.deferred_stops` halts them too: they
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
