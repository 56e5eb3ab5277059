"""Keep a local mirror of PyPI's simple index, and RSTUF, in step with PyPI.

The first run (or ``--full-check``) compares PyPI's whole project listing with
the mirror and fetches what is missing or behind. Later runs read PyPI's
changelog since the serial in ``state.json``, fetch each project it mentions
once, and let the page decide: 200 writes the bytes exactly as served, 404
removes the project. Every changed page is queued in a durable outbox for
RSTUF, which signs it for TUF clients.

PyPI is spoken to only through ``pypi_client.py``, RSTUF only through
``rstuf_client.py``, and the disk's rules live in ``mirror_store.py``. This
module reads top-down: pure functions over changelog entries and the root
index, the writer (the only code that changes the mirror), the RSTUF outbox,
the sync that orchestrates them, and ``main``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import html
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rstuf_client
from mirror_store import (
    DEFAULT_MIRROR_DIR,
    DEFAULT_STATE,
    HASH_FACTORIES,
    PAGE_NAME,
    ROOT_TARGET,
    TUF_HASH_ALGORITHM,
    InvalidProjectName,
    MirrorLayout,
    MirrorLocked,
    OutboxTask,
    PendingProject,
    State,
    StateError,
    at_least,
    clear_staging,
    clear_state_temps,
    configure_logging,
    digest_bytes,
    digest_file,
    load_state,
    mirror_lock,
    prefixed_name,
    project_dir_name,
    project_target,
    save_state,
    sync_filesystem,
    target_of_copy,
)
from pypi_client import (
    USER_AGENT,
    ChangelogEntry,
    FetchedPage,
    MissingPage,
    NotASimplePage,
    PypiClient,
    StalePage,
    UpstreamError,
    inspect_simple_page,
    is_serial,
    retry_delay,
)

log = logging.getLogger("pypi_mirror")
# The one line every run ends with; logged at INFO even under -q (see configure_logging).
summary_log = logging.getLogger("pypi_mirror.summary")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_PARTIAL = 75


@dataclass(frozen=True)
class Config:
    """Everything a run is told; units in the names or comments."""

    mirror_dir: Path = DEFAULT_MIRROR_DIR
    state_path: Path = DEFAULT_STATE
    pypi_url: str = "https://pypi.org"
    workers: int = 8
    full_check: bool = False
    dry_run: bool = False
    rstuf_url: str | None = None
    rstuf_token: str | None = None  # from RSTUF_API_TOKEN only
    rstuf_wait: float = 600.0  # seconds to wait for RSTUF tasks per delivery
    rstuf_batch: int = 5000  # artifacts per RSTUF request
    rstuf_poll: float = 2.0  # seconds between two task polls
    grace: float = 3600.0  # seconds an old hash-prefixed copy stays served
    timeout: float = 60.0  # read timeout of one HTTP request, seconds
    connect_timeout: float = 10.0
    retries: int = 5  # attempts after the first, per request or stale page
    backoff: float = 1.0  # first retry delay, seconds; doubles, with jitter
    max_page_bytes: int = 64 << 20
    max_xmlrpc_bytes: int = 512 << 20
    xmlrpc_interval: float = 1.0  # seconds between XML-RPC calls (PyPI's etiquette)
    progress: bool = False


# --- errors


# --- test hook

CRASH_AT_ENV = "PYPI_MIRROR_CRASH_AT"
_crash_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process the n-th time it passes point `name`.

    The crash tests (tests/test_crash.py) set ``PYPI_MIRROR_CRASH_AT=<name>:<n>``
    to prove that a run killed right there loses nothing. Points: ``page-temp``
    (page bytes in a temp file), ``page-renamed`` (page renamed into place),
    ``state-save`` (before state.json is written), ``rstuf-answered`` (RSTUF
    accepted a request, its task id not yet saved). Inert when the variable is unset.
    """
    spec = os.environ.get(CRASH_AT_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    _crash_passes[name] = _crash_passes.get(name, 0) + 1
    if _crash_passes[name] == int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --- records and pure functions


def projects_to_refresh(entries: Iterable[ChangelogEntry]) -> dict[str, PendingProject]:
    """Every project the changelog mentions (both names of a rename), with its newest serial.

    The page fetched afterwards decides whether a project exists; the action
    only says whether a 404 is plausible (see `expects_page`). Invalid names are
    skipped with a warning.
    """
    wanted: dict[str, PendingProject] = {}
    for entry in entries:
        # The new name last: a rename that keeps the normalized name keeps the new spelling.
        for name in (entry.renamed_from, entry.name):
            if name is None:
                continue
            try:
                normalized = project_dir_name(name)
            except InvalidProjectName as exc:
                log.warning("skipping changelog entry %d: %s", entry.serial, exc)
                continue
            expect = name == entry.name and expects_page(entry)
            merge_pending(wanted, normalized, PendingProject(name, entry.serial, expect))
    return wanted


def expects_page(entry: ChangelogEntry) -> bool:
    """Whether the project named by `entry` exists after it (its page must not be a 404).

    Only a removal makes a 404 right; after anything else a 404 is a CDN that
    has not caught up (a project just created), so it is retried, then kept pending.
    """
    removal = entry.action == "remove project" or (entry.action == "remove" and not entry.version)
    return not removal


IDENTITY_ACTIONS = ("create", "remove project", "rename from ")


def identity_changes(entries: Iterable[ChangelogEntry]) -> set[str]:
    """Projects whose root-index line may change even if their page existed before and after.

    A project removed and created again may come back with another display
    name. This only decides whether the root index is re-read, never what a
    page holds or whether it exists.
    """
    names = set()
    for entry in entries:
        if entry.action.startswith(IDENTITY_ACTIONS):
            for name in (entry.name, entry.renamed_from):
                with contextlib.suppress(InvalidProjectName, TypeError):
                    names.add(project_dir_name(name))
    return names


def merge_pending(into: dict[str, PendingProject], name: str, item: PendingProject) -> None:
    """Keep, for each project, the newest serial seen and the display name that came with it."""
    current = into.get(name)
    if current is None or item.serial >= current.serial:
        into[name] = item


class Listing(Mapping[str, PendingProject]):
    """PyPI's whole listing, compact: {normalized: serial}, plus the display names that differ.

    700,000 projects are held through a full sync; a PendingProject each would
    add about 45 MiB, so one is made only when a project is looked up.
    """

    def __init__(self) -> None:
        self.serials: dict[str, int] = {}
        self.displays: dict[str, str] = {}  # only where the display name is not the key

    def add(self, normalized: str, display: str, serial: int) -> None:
        """Keep the newest serial per project and the display name that came with it."""
        if serial < self.serials.get(normalized, -1):
            return
        # Most names are listed already normalized: one string then serves as both.
        key = display if display == normalized else normalized
        self.serials[key] = serial
        if key is display:
            self.displays.pop(key, None)
        else:
            self.displays[key] = display

    def __getitem__(self, name: str) -> PendingProject:
        return PendingProject(self.displays.get(name, name), self.serials[name], expect_page=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self.serials)

    def __len__(self) -> int:
        return len(self.serials)

    def __contains__(self, name: object) -> bool:
        return name in self.serials


def listing_to_wanted(listing: dict[str, int]) -> Listing:
    """Validate ``list_packages_with_serial`` into a Listing."""
    wanted = Listing()
    for display, serial in listing.items():
        add_listed(wanted, display, serial)
    return wanted


def add_listed(wanted: Listing, display: object, serial: object) -> None:
    """Add one listed project to `wanted` if its name and serial are valid; warn otherwise."""
    try:
        normalized = project_dir_name(display)  # type: ignore[arg-type]
    except InvalidProjectName as exc:
        log.warning("skipping listed project: %s", exc)
        return
    if not is_serial(serial):
        log.warning("skipping listed project %r: serial %r is not a serial", display, serial)
        return
    assert isinstance(display, str) and isinstance(serial, int)
    wanted.add(normalized, display, serial)


ROOT_HEADER = (
    b'<!DOCTYPE html>\n<html lang="en">\n  <head>\n'
    b'    <meta name="pypi:repository-version" content="1.4">\n'
    b"    <title>Simple index</title>\n  </head>\n  <body>\n"
)
ROOT_FOOTER = b"  </body>\n</html>\n"
_ROOT_LINK = re.compile(rb'^    <a href="simple/([a-z0-9-]+)/">([^<]*)</a>$', re.MULTILINE)


def render_root_lines(projects: Iterable[tuple[str, str]]) -> Iterator[bytes]:
    """The mirror's root page, line by line, for (normalized, display) pairs in sorted order.

    Streamed: at PyPI's size the page is tens of MB, built from 700,000 names.
    """
    yield ROOT_HEADER
    for normalized, display in projects:
        text = html.escape(display, quote=False)
        yield f'    <a href="simple/{normalized}/">{text}</a>\n'.encode()
    yield ROOT_FOOTER


def iter_root_index(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """Inverse of render_root_lines (only ever reads pages this tool wrote)."""
    for line in lines:
        match = _ROOT_LINK.match(line.rstrip(b"\n"))
        if match:
            yield match.group(1).decode(), html.unescape(match.group(2).decode())


def parse_root_index(data: bytes) -> dict[str, str]:
    return dict(iter_root_index(data.splitlines()))


def merge_root(
    current: Iterable[tuple[str, str]], changes: dict[str, str | None]
) -> Iterator[tuple[str, str]]:
    """Merge sorted root members with `changes` (None: leave the root), in sorted order."""
    updates = sorted(changes.items())
    index = 0
    for name, display in current:
        while index < len(updates) and updates[index][0] <= name:
            changed, new_display = updates[index]
            index += 1
            if new_display is not None:
                yield changed, new_display
            if changed == name:
                break
        else:
            yield name, display
    for changed, new_display in updates[index:]:
        if new_display is not None:
            yield changed, new_display


_SERIAL_TRAILER = re.compile(rb"<!--SERIAL (\d+)-->\s*$")


def page_serial(page_tail: bytes) -> int | None:
    """The serial warehouse writes at the end of each page (``<!--SERIAL n-->``)."""
    match = _SERIAL_TRAILER.search(page_tail)
    return int(match.group(1)) if match else None


# --- the writer: the only code that changes the mirror


@dataclass
class Change:
    """What one fetched page does to the mirror."""

    name: str
    display_name: str
    page: FetchedPage
    old: bytes | None  # the page on disk before, if any

    @property
    def removes(self) -> bool:
        return self.page.body is None

    @property
    def modifies(self) -> bool:
        return self.page.body != self.old

    def listed_before(self) -> bool:
        """Whether the page on disk put the project in the root index (same rule as after)."""
        if self.old is None:
            return False
        try:
            return inspect_simple_page(self.name, self.old).listed
        except NotASimplePage:
            return True  # damaged on disk: the root index still lists it

    def listed_after(self) -> bool:
        return self.page.facts is not None and self.page.facts.listed


class MirrorWriter:
    """Writes pages atomically, keeps their hash-prefixed copies, retires old copies.

    A page lives at ``<dir>/index.html`` and, hard-linked to the same inode,
    at ``<dir>/<blake2b-256>.index.html``: the name a TUF client with
    consistent snapshots downloads. A superseded copy is kept while RSTUF has
    not confirmed the new state, then `grace` seconds more (a client may be
    between its metadata refresh and its download).
    """

    def __init__(self, layout: MirrorLayout, state: State, clock: Callable[[], float] = time.time):
        self.layout = layout
        self.state = state
        self.clock = clock
        self._staging_ready = False

    def read_page(self, name: str) -> bytes | None:
        try:
            return self.layout.project_page(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def local_serial(self, name: str) -> int | None:
        """The serial of the page on disk, from its trailer (None: absent or unknown)."""
        try:
            with open(self.layout.project_page(name), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64))
                return page_serial(handle.read())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def local_projects(self) -> set[str]:
        """Names of the project pages on disk (a full scan: only for full syncs)."""
        try:
            entries = os.scandir(self.layout.simple_dir)
        except FileNotFoundError:
            return set()
        with entries:
            return {
                entry.name
                for entry in entries
                if entry.is_dir() and os.path.exists(os.path.join(entry.path, PAGE_NAME))
            }

    def apply(self, change: Change) -> None:
        if change.removes:
            self.remove_project(change.name)
        else:
            assert change.page.body is not None
            self.store(self.layout.project_dir(change.name), change.page.body, change.old)

    def store(self, directory: Path, body: bytes, old: bytes | None) -> bool:
        """Write `body` as directory/index.html plus its prefixed copy; retire the old copy.

        Returns whether the page's bytes changed.
        """
        directory.mkdir(parents=True, exist_ok=True)
        digest = digest_bytes(body).hexdigest
        if old == body:
            self.ensure_copy(directory, digest)
            return False
        temp = self._write_temp(body)
        crash_point("page-temp")
        self.install(directory, temp, digest)
        self.retire_replaced(directory, old, body)
        return True

    def install(self, directory: Path, temp: Path, digest: str) -> None:
        """Move a staged page into place: hash-prefixed copy first, then ``index.html``."""
        copy = directory / prefixed_name(digest)
        try:
            self._link_copy(temp, copy)
            os.replace(temp, directory / PAGE_NAME)
            crash_point("page-renamed")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self.state.retired.pop(self._relative(copy), None)

    def stage(self, chunks: Iterable[bytes], keep: bool = True) -> tuple[Path | None, str]:
        """Write `chunks` to a temp file (unless not `keep`), hashing them on the way."""
        hasher = HASH_FACTORIES[TUF_HASH_ALGORITHM]()
        temp = self._temp_name() if keep else None
        with open(temp, "wb") if temp else contextlib.nullcontext() as handle:
            for chunk in chunks:
                hasher.update(chunk)
                if handle is not None:
                    handle.write(chunk)
        return temp, hasher.hexdigest()

    def discard(self, temp: Path | None) -> None:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def root_digest(self) -> str | None:
        try:
            return digest_file(self.layout.root_page).hexdigest
        except FileNotFoundError:
            return None

    def ensure_copy(self, directory: Path, digest: str) -> None:
        """Relink an unchanged page's prefixed copy if a killed run or damage broke it."""
        page, copy = directory / PAGE_NAME, directory / prefixed_name(digest)
        if not (copy.exists() and os.path.samefile(copy, page)):
            self._link_copy(page, copy)

    def _temp_name(self) -> Path:
        staging = self.layout.staging_dir
        if not self._staging_ready:
            staging.mkdir(parents=True, exist_ok=True)
            self._staging_ready = True
        return staging / f".tmp-{os.getpid()}-{random.getrandbits(64):016x}"

    def _write_temp(self, body: bytes) -> Path:
        path = self._temp_name()
        with open(path, "wb") as handle:
            handle.write(body)
        return path

    def _link_copy(self, source: Path, copy: Path) -> None:
        """Make `copy` a hard link to `source`, replacing whatever had that name atomically."""
        link = self._temp_name()
        os.link(source, link)
        try:
            os.replace(link, copy)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            raise

    def remove_project(self, name: str) -> None:
        """Unlink the page at once; its prefixed copies stay until their grace ends."""
        directory = self.layout.project_dir(name)
        page = directory / PAGE_NAME
        with contextlib.suppress(FileNotFoundError):
            old_digest = digest_file(page).hexdigest
            page.unlink()
            self.retire(directory / prefixed_name(old_digest))
        self._remove_if_empty(directory)

    def prepare(self, change: Change) -> bool:
        """Before `apply`: record what it will retire; True if the state must be saved first."""
        directory = self.layout.project_dir(change.name)
        return self.retire_replaced(directory, change.old, change.page.body)

    def retire_replaced(self, directory: Path, old: bytes | None, new: bytes | None) -> bool:
        """Retire the prefixed copy of page `old` if `new` (None: no page) replaces it.

        Called before the write, so the caller saves the retirement with the state
        first: a run killed right after the write leaves a page its rerun finds
        unchanged, and the old copy would otherwise be served for ever. Called
        again after the write, which starts the grace at the real replacement.
        """
        if old is None or old == new:
            return False
        self.retire(directory / prefixed_name(digest_bytes(old).hexdigest))
        return True

    def retire(self, copy: Path) -> None:
        """Start (or restart) `copy`'s grace period now."""
        self.state.retired[self._relative(copy)] = self.clock()

    def collect_retired(self, grace: float) -> int:
        """Delete prefixed copies retired more than `grace` seconds ago.

        Never the current copy, and never one of a page whose new state RSTUF
        has not confirmed yet: until it publishes, its metadata still names the
        old copy (the grace restarts when it confirms, see `restart_grace`).
        """
        deadline = self.clock() - grace
        owed = self.state.outbox.dirty | self.state.outbox.in_flight_paths()
        removed = 0
        for relative, retired_at in list(self.state.retired.items()):
            if retired_at > deadline or target_of_copy(relative) in owed:
                continue
            copy = self.layout.served_dir / relative
            current = copy.parent / PAGE_NAME
            with contextlib.suppress(FileNotFoundError):
                if current.exists() and os.path.samefile(copy, current):
                    del self.state.retired[relative]
                    continue
                copy.unlink()
                removed += 1
            del self.state.retired[relative]
            if copy.parent != self.layout.served_dir:
                self._remove_if_empty(copy.parent)
        return removed

    def restart_grace(self, targets: set[str]) -> None:
        """RSTUF now signs the new state of `targets`: their old copies get a full grace."""
        now = self.clock()
        for relative in self.state.retired:
            if target_of_copy(relative) in targets:
                self.state.retired[relative] = now

    def _remove_if_empty(self, directory: Path) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.layout.served_dir).as_posix()


# --- the RSTUF outbox


@dataclass
class DeliveryReport:
    sent: int = 0
    confirmed: set[str] = field(default_factory=set)  # paths RSTUF now publishes
    errors: list[str] = field(default_factory=list)


class RstufDelivery:
    """Delivers the changes in ``state.outbox`` to RSTUF, at most once per path at a time.

    A path is sent as its final state on disk (present: add with its length and
    hash; absent: remove). A path already in an unfinished task waits until that
    task ends, so RSTUF never sees an older state after a newer one. Each accepted
    task id is saved in state.json before anything else happens, so a crash costs
    at most a resend of an idempotent request.
    """

    TASK_EXPIRY = 6 * 3600.0  # an unknown task id stays PENDING for ever: resend after this

    def __init__(
        self,
        state: State,
        layout: MirrorLayout,
        client: rstuf_client.RstufClient,
        save: Callable[[], None],
        config: Config,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.box = state.outbox
        self.layout, self.client, self.save, self.config = layout, client, save, config
        self.clock, self.sleep = clock, sleep
        self.task_states: dict[str, str] = {}
        self.failed_paths: set[str] = set()  # not resent in the run their task failed in
        self.sent_now: set[str] = set()  # ids of the tasks this delivery sent

    def deliver(self) -> DeliveryReport:
        """Poll, send, publish and wait until every task ended or `rstuf_wait` passed."""
        report = DeliveryReport()
        deadline = time.monotonic() + self.config.rstuf_wait
        try:
            self._poll(report)
            self._send(report)
            while self.box.tasks and time.monotonic() < deadline:
                self._publish_if_ready()
                self.sleep(min(self.client.poll_interval, max(0.0, deadline - time.monotonic())))
                self._poll(report)
                self._send(report)
        except rstuf_client.RstufError as exc:
            report.errors.append(str(exc))
        if self.box.tasks and not report.errors:
            report.errors.append(
                f"{len(self.box.tasks)} RSTUF task(s) not finished after "
                f"{self.config.rstuf_wait:.0f}s; they are checked again next run"
            )
        if self.box.dirty and not report.errors:
            report.errors.append(f"{len(self.box.dirty)} change(s) not sent to RSTUF")
        return report

    def _poll(self, report: DeliveryReport) -> None:
        changed = False
        for task in list(self.box.tasks):
            result = self.client.task(task.task_id)
            self.task_states[task.task_id] = result.state
            failure = rstuf_client.task_failure(result)
            if failure is not None:
                report.errors.append(failure)
                self.failed_paths.update(task.paths)
                self._requeue(task)
            elif result.state == "SUCCESS":
                report.confirmed.update(task.paths)
                self.box.tasks.remove(task)
            elif self.clock() - task.sent_at > self.TASK_EXPIRY:
                log.warning(
                    "RSTUF task %s still %s after %.0fs; sending its changes again",
                    task.task_id,
                    result.state,
                    self.TASK_EXPIRY,
                )
                self._requeue(task)
            else:
                continue
            changed = True
        if changed:
            self.save()

    def _requeue(self, task: OutboxTask) -> None:
        self.box.tasks.remove(task)
        self.box.dirty.update(task.paths)

    def _send(self, report: DeliveryReport) -> None:
        ready = sorted(self.box.dirty - self.box.in_flight_paths() - self.failed_paths)
        if not ready:
            return
        adds, removes = self._final_states(ready)
        batch = self.config.rstuf_batch
        requests_needed = -(-len(adds) // batch) + -(-len(removes) // batch)
        publish_each = requests_needed == 1  # several: publish once, after all rows are written
        for start in range(0, len(adds), batch):
            chunk = adds[start : start + batch]
            task_id = self.client.add(chunk, publish=publish_each)
            self._record(task_id, "add", [artifact.path for artifact in chunk], publish_each)
            report.sent += len(chunk)
        for start in range(0, len(removes), batch):
            chunk = removes[start : start + batch]
            task_id = self.client.remove(chunk, publish=publish_each)
            self._record(task_id, "remove", chunk, publish_each)
            report.sent += len(chunk)

    def _final_states(self, paths: list[str]) -> tuple[list[rstuf_client.Artifact], list[str]]:
        """Split paths into artifacts to add (hashed from disk now) and paths to remove."""
        adds, removes = [], []
        for path in paths:
            try:
                digest = digest_file(self.layout.path_of_target(path))
            except (FileNotFoundError, NotADirectoryError):
                removes.append(path)
                continue
            hashes = {TUF_HASH_ALGORITHM: digest.hexdigest}
            adds.append(rstuf_client.Artifact(path, digest.length, hashes))
        return adds, removes

    def _record(self, task_id: str, action: str, paths: list[str], published: bool) -> None:
        crash_point("rstuf-answered")
        self.sent_now.add(task_id)
        self.box.tasks.append(OutboxTask(task_id, action, paths, published, self.clock()))
        self.box.dirty.difference_update(paths)
        self.save()

    def _publish_if_ready(self) -> None:
        """Publish the tasks that wrote their rows (RUNNING or SUCCESS) once all sent now have.

        A publish posted earlier could run first and cover nothing, leaving the
        tasks RUNNING for ever (REFERENCE: the publish race). A task left by an
        earlier run that has still not written its rows is stuck or lost by RSTUF
        (it is resent once it expires): it must not hold back every later change.
        """
        unpublished = [task for task in self.box.tasks if not task.published]
        written = [
            task
            for task in unpublished
            if rstuf_client.is_waiting_for_publish(self.task_states.get(task.task_id, ""))
        ]
        if not written or any(
            task.task_id in self.sent_now for task in unpublished if task not in written
        ):
            return
        self.client.publish()
        for task in written:
            task.published = True
        self.save()


# --- progress


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


# --- the sync


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    requests: int = 0
    rstuf_sent: int = 0
    serial_before: int | None = None
    serial_after: int | None = None
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"summary added={self.added} updated={self.updated} removed={self.removed} "
            f"unchanged={self.unchanged} failed={self.failed} requests={self.requests} "
            f"rstuf_sent={self.rstuf_sent} elapsed={self.elapsed:.1f}s "
            f"serial={self.serial_before}->{self.serial_after}"
        )


@dataclass
class Refreshed:
    """What `Sync.refresh` learned beyond the pages it wrote."""

    failed: set[str] = field(default_factory=set)  # kept pending
    unlisted: set[str] = field(default_factory=set)  # fetched: gone or quarantined

    def lists(self, name: str, if_failed: bool = True) -> bool:
        """Whether `name` belongs in the root index; `if_failed` when its fetch failed."""
        if name in self.failed:
            return if_failed
        return name not in self.unlisted


class Sync:
    """One run: deliver what RSTUF is owed, bring the mirror up to date, deliver again."""

    BATCH = 1000  # changes recorded in the outbox with one durable state write

    def __init__(
        self,
        config: Config,
        pypi: PypiClient,
        rstuf: rstuf_client.RstufClient | None,
        progress: Progress,
        out: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.layout = MirrorLayout(config.mirror_dir)
        self.pypi = pypi
        self.rstuf = rstuf
        self.progress = progress
        self.out = out
        self.summary = Summary()
        self.state = State()
        self.writer = MirrorWriter(self.layout, self.state)
        self.membership_changed = False

    # the run

    def run(self) -> int:
        started = time.monotonic()
        with mirror_lock(self.layout.lock_path):
            clear_staging(self.layout.staging_dir)
            clear_state_temps(self.config.state_path)
            self.state = load_state(self.config.state_path)
            self.writer = MirrorWriter(self.layout, self.state)
            self.summary.serial_before = self.state.serial
            if self.state.outbox.dirty and not self.config.dry_run:
                # a killed run may have left pages unflushed: never register bytes
                # that a power cut could still take back
                sync_filesystem(self.layout.root)
            self.deliver_outbox()
            if self.needs_full_sync():
                self.full_sync()
            else:
                self.update()
            if not self.config.dry_run:
                self.writer.collect_retired(self.config.grace)
                sync_filesystem(self.layout.root)  # every page durable before the serial moves
                self.save()
                self.deliver_outbox()
        self.summary.serial_after = self.state.serial
        self.summary.requests = self.pypi.requests_made
        self.summary.elapsed = time.monotonic() - started
        for problem in self.summary.problems:
            log.warning("%s", problem)
        summary_log.info("%s", self.summary.line())
        return EXIT_PARTIAL if self.summary.problems or self.state.pending else EXIT_OK

    def needs_full_sync(self) -> bool:
        state = self.state
        return state.serial is None or state.full_sync_in_progress or self.config.full_check

    def save(self) -> None:
        if not self.config.dry_run:
            crash_point("state-save")
            save_state(self.config.state_path, self.state)

    # first sync and --full-check

    def full_sync(self) -> None:
        """Compare PyPI's whole listing with the mirror and fix every difference.

        The target serial is taken before the listing and lowered to the
        listing's newest serial (PyPI caches the listing for up to an hour), so
        the next update replays anything the listing did not show yet. A first
        sync records nothing for RSTUF: RSTUF is bootstrapped from the CSV.
        """
        first = self.state.serial is None and not self.layout.root_page.exists()
        last_serial = self.pypi.changelog_last_serial()
        wanted = Listing()  # only checked serials set the target
        self.pypi.list_packages_with_serial(functools.partial(add_listed, wanted))
        target = min(last_serial, max(wanted.serials.values(), default=last_serial))
        log.info(
            "%s: %d projects listed at serial %d",
            "first sync" if first else "full check",
            len(wanted),
            target,
        )
        if not self.state.full_sync_in_progress:
            self.state.full_sync_in_progress = True
            self.save()
        local = self.writer.local_projects()
        if self.config.full_check or not local:  # archiving leaves the serial as it was
            current: set[str] = set()
        else:
            current = {n for n, item in wanted.items() if self.is_current(n, item, local)}
        gone = local - wanted.serials.keys()
        if not current and not gone and not self.state.pending:
            to_fetch = wanted  # a first sync: no second 700,000-entry dict or list
        else:
            to_fetch = {name: item for name, item in wanted.items() if name not in current}
        for name in gone:  # PyPI no longer lists it: let its page decide
            to_fetch[name] = PendingProject(name, 0)
        for name, item in self.state.pending.items():
            merge_pending(to_fetch, name, item)
        self.summary.unchanged += len(current)
        outcome = self.refresh(to_fetch, record_changes=not first)
        members = (
            (name, wanted[name].display_name)
            for name in sorted(wanted)
            if outcome.lists(name, if_failed=name in local)
        )
        self.write_root(members, record_change=not first)
        self.state.serial = target if self.state.serial is None else max(self.state.serial, target)
        self.state.full_sync_in_progress = False

    def is_current(self, name: str, item: PendingProject, local: set[str]) -> bool:
        if name not in local or name in self.state.pending:
            return False
        on_disk = self.writer.local_serial(name)
        return on_disk is not None and on_disk >= item.serial

    # updates from the changelog

    def update(self) -> None:
        """Apply the changelog since ``state.serial``: fetch each mentioned project once."""
        since = self.state.serial
        assert since is not None
        last_serial = self.pypi.changelog_last_serial()
        to_fetch: dict[str, PendingProject] = {}
        newest = since
        renamed: set[str] = set()
        for entries in self.pypi.changelog_since(since, last_serial):
            for name, item in projects_to_refresh(entries).items():
                merge_pending(to_fetch, name, item)
            renamed |= identity_changes(entries)
            newest = entries[-1].serial
        for name, item in self.state.pending.items():
            merge_pending(to_fetch, name, item)
        log.info("changelog %d->%d: %d projects to refresh", since, newest, len(to_fetch))
        outcome = self.refresh(to_fetch, record_changes=True)
        fetched = to_fetch.keys() - outcome.failed
        if self.membership_changed or self.state.root_stale or renamed & fetched:
            self.rewrite_root(
                {
                    name: to_fetch[name].display_name if outcome.lists(name) else None
                    for name in fetched
                }
            )
        self.state.serial = newest

    def rewrite_root(self, changes: dict[str, str | None]) -> None:
        """Merge membership changes into the root index, streaming it (read back from disk)."""
        try:
            with open(self.layout.root_page, "rb") as current:
                self.write_root(merge_root(iter_root_index(current), changes), record_change=True)
        except FileNotFoundError:
            self.write_root(merge_root([], changes), record_change=True)

    def write_root(self, members: Iterable[tuple[str, str]], record_change: bool) -> None:
        """Write the root index from sorted (normalized, display) pairs if its bytes change."""
        served = self.layout.served_dir
        temp, digest = self.writer.stage(render_root_lines(members), keep=not self.config.dry_run)
        old_digest = self.writer.root_digest()
        if digest == old_digest:
            self.writer.discard(temp)
            if not self.config.dry_run:
                self.writer.ensure_copy(served, digest)
                self.state.root_stale = False
            return
        if temp is None:  # dry run
            self.out(f"write {ROOT_TARGET}")
            return
        # Intent before action, as for pages: a run killed right after the write
        # finds the root unchanged, and would neither tell RSTUF nor retire the copy.
        old_copy = served / prefixed_name(old_digest) if old_digest else None
        if old_copy is not None:
            self.writer.retire(old_copy)
        if record_change:
            self.state.outbox.dirty.add(ROOT_TARGET)
        self.save()
        served.mkdir(parents=True, exist_ok=True)
        self.writer.install(served, temp, digest)
        if old_copy is not None:
            self.writer.retire(old_copy)  # the grace starts at the real replacement
        self.state.root_stale = False

    # fetching and applying

    def refresh(self, wanted: Mapping[str, PendingProject], record_changes: bool) -> Refreshed:
        """Fetch every project in `wanted` once and apply what its page says.

        Returns which projects failed and which were fetched but do not belong
        in the root index (gone, or quarantined): both sets are small, where a
        flag per project would be 700,000 entries. Failures stay in ``state.pending``. With
        `record_changes`, each batch of changed paths is saved to the outbox
        before the batch touches the disk, so RSTUF hears of every write even
        if the run dies right after it.
        """
        outcome = Refreshed()
        self.progress.start(len(wanted), "fetching")
        batch: list[Change] = []
        for name, fetched in self.fetch_all(wanted):
            self.progress.advance()
            if isinstance(fetched, Exception):
                self.keep_pending(name, wanted[name], fetched)
                outcome.failed.add(name)
                continue
            change = Change(name, wanted[name].display_name, fetched, self.writer.read_page(name))
            if not change.listed_after():
                outcome.unlisted.add(name)
            if not change.modifies:
                self.summary.unchanged += change.page.body is not None
                continue
            batch.append(change)
            if len(batch) >= self.BATCH:
                self.apply_batch(batch, record_changes)
                batch = []
        self.apply_batch(batch, record_changes)
        self.progress.finish()
        for name in list(self.state.pending):  # only now: an intent save must keep them
            if name in wanted and name not in outcome.failed:
                del self.state.pending[name]
        return outcome

    def fetch_all(
        self, wanted: Mapping[str, PendingProject]
    ) -> Iterator[tuple[str, FetchedPage | UpstreamError]]:
        """Fetch pages concurrently, yielding each as it finishes, with a bounded window."""
        names = iter(wanted)  # in listing order: a sorted copy would be 700,000 more references
        window = self.config.workers * 4
        with concurrent.futures.ThreadPoolExecutor(self.config.workers) as pool:
            running: dict[concurrent.futures.Future, str] = {}

            def submit_next() -> None:
                name = next(names, None)
                if name is not None:
                    running[pool.submit(self.fetch_current, name, wanted[name])] = name

            for _ in range(window):
                submit_next()
            while running:
                done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
                for future in done:
                    name = running.pop(future)
                    submit_next()
                    try:
                        yield name, future.result()
                    except UpstreamError as exc:
                        yield name, exc

    def fetch_current(self, name: str, item: PendingProject) -> FetchedPage:
        """Fetch a page, retrying while PyPI's CDN serves one older than the changelog.

        Older means a lower ``X-PyPI-Last-Serial``, or a 404 for a project the
        changelog's newest entry says exists. Raises StalePage or MissingPage.
        """
        for attempt in range(self.config.retries + 1):
            page = self.pypi.with_retries(name, lambda: self.pypi.fetch_page(name))
            assert isinstance(page, FetchedPage)
            if page.body is None:
                if not item.expect_page:
                    return page
            elif page.serial is not None and page.serial >= item.serial:
                return page
            log.debug("%s: stale answer (serial %s < %d)", name, page.serial, item.serial)
            if attempt < self.config.retries:
                time.sleep(retry_delay(attempt, self.config.backoff, None))
        if page.body is None:
            raise MissingPage(name, item.serial)
        raise StalePage(name, item.serial, page.serial or 0)

    def keep_pending(self, name: str, item: PendingProject, error: Exception) -> None:
        log.warning("%s; kept pending for the next run", error)
        merge_pending(self.state.pending, name, item)
        self.summary.failed += 1

    def apply_batch(self, batch: list[Change], record_changes: bool) -> None:
        if not batch:
            return
        if self.config.dry_run:
            for change in batch:
                self.out(f"{'remove' if change.removes else 'write'} {project_target(change.name)}")
            return
        membership = any(change.listed_before() != change.listed_after() for change in batch)
        self.membership_changed |= membership
        retiring = [self.writer.prepare(change) for change in batch]
        if record_changes:
            self.state.outbox.dirty.update(project_target(change.name) for change in batch)
            self.state.root_stale |= membership
        if record_changes or any(retiring):
            self.save()  # the batch's intent is durable before it touches the disk
        for change in batch:
            self.writer.apply(change)
            self.count(change)

    def count(self, change: Change) -> None:
        if change.removes:
            self.summary.removed += 1
        elif change.old is None:
            self.summary.added += 1
        else:
            self.summary.updated += 1

    # RSTUF

    def deliver_outbox(self) -> None:
        box = self.state.outbox
        if self.config.dry_run:
            for path in sorted(box.dirty):
                exists = self.layout.path_of_target(path).exists()
                self.out(f"rstuf-{'add' if exists else 'remove'} {path}")
            return
        if not box.dirty and not box.tasks:
            return
        if self.rstuf is None:
            log.warning(
                "%d change(s) wait in the outbox for RSTUF: set RSTUF_API_URL or --rstuf-url",
                len(box),
            )
            return
        report = RstufDelivery(
            self.state, self.layout, self.rstuf, self.save, self.config
        ).deliver()
        self.summary.rstuf_sent += report.sent
        self.writer.restart_grace(report.confirmed)
        self.save()
        self.summary.problems.extend(f"RSTUF: {error}" for error in report.errors)


# --- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pypi_mirror.py",
        description=(
            "Mirror PyPI's simple index and keep RSTUF in step. The first run syncs every "
            "project; later runs apply PyPI's changelog since the serial in the state file."
        ),
        epilog=(
            "environment: PYPI_URL, RSTUF_API_URL, RSTUF_API_TOKEN (the token is read only "
            "from the environment). exit codes: 0 done; 1 failed (state not advanced past "
            "what is on disk); 2 usage error; 3 another run holds the mirror lock; 75 partly "
            "done (pages or RSTUF changes kept pending for the next run)."
        ),
    )
    parser.add_argument(
        "--mirror-dir",
        type=Path,
        default=DEFAULT_MIRROR_DIR,
        help="mirror directory; pages go to DIR/pypi_mirror/ (default: %(default)s)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        help="state file: serial, pending projects, RSTUF outbox (default: %(default)s)",
    )
    parser.add_argument(
        "--pypi-url",
        default=os.environ.get("PYPI_URL", "https://pypi.org"),
        help="index to mirror; XML-RPC at URL/pypi, pages at URL/simple/ "
        "(env PYPI_URL; default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=8,
        help="concurrent page fetches (default: %(default)s)",
    )
    parser.add_argument(
        "--full-check",
        action="store_true",
        help="compare PyPI's whole listing with the mirror: fetch what is "
        "missing or behind, remove what PyPI no longer has (404)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be fetched, written, removed and sent to RSTUF "
        "on stdout; change nothing",
    )
    parser.add_argument(
        "--rstuf-url",
        default=os.environ.get("RSTUF_API_URL"),
        help="RSTUF API base URL (env RSTUF_API_URL); without it changes wait in the outbox",
    )
    parser.add_argument(
        "--rstuf-wait",
        type=non_negative_float,
        default=600.0,
        help="seconds to wait for RSTUF tasks to finish (default: %(default)s)",
    )
    parser.add_argument(
        "--rstuf-batch",
        type=positive_int,
        default=5000,
        help="artifacts per RSTUF request; a bigger update is sent in several requests and "
        "published once (default: %(default)s)",
    )
    parser.add_argument(
        "--rstuf-poll",
        type=non_negative_float,
        default=2.0,
        help="seconds between two polls of an RSTUF task (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=non_negative_float,
        default=3600.0,
        help="seconds an old hash-prefixed page copy stays served for TUF "
        "clients (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=non_negative_float,
        default=60.0,
        help="read timeout of one HTTP request, seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=5,
        help="retries per request and per stale page (default: %(default)s)",
    )
    parser.add_argument(
        "--backoff",
        type=non_negative_float,
        default=1.0,
        help="first retry delay in seconds, doubled each retry, with jitter (default: %(default)s)",
    )
    parser.add_argument(
        "--xmlrpc-interval",
        type=non_negative_float,
        default=1.0,
        help="seconds between XML-RPC calls, PyPI's etiquette (default: %(default)s)",
    )
    parser.add_argument(
        "--max-page-bytes",
        type=positive_int,
        default=Config.max_page_bytes,
        help="a project page larger than this is refused and kept pending, never "
        "mirrored (default: %(default)s)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log every page")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only"
    )
    return parser


positive_int = at_least(1)
non_negative_int = at_least(0)
non_negative_float = at_least(0, float)


def configure_summary_logging() -> None:
    """The summary line is logged at INFO even under -q: cron keeps one line per run."""
    summary_log.setLevel(logging.INFO)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        mirror_dir=args.mirror_dir,
        state_path=args.state,
        pypi_url=args.pypi_url,
        workers=args.workers,
        full_check=args.full_check,
        dry_run=args.dry_run,
        rstuf_url=args.rstuf_url or None,
        rstuf_token=os.environ.get("RSTUF_API_TOKEN") or None,
        rstuf_wait=args.rstuf_wait,
        rstuf_batch=args.rstuf_batch,
        rstuf_poll=args.rstuf_poll,
        grace=args.grace,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        xmlrpc_interval=args.xmlrpc_interval,
        max_page_bytes=args.max_page_bytes,
        progress=sys.stderr.isatty() and not args.quiet,
    )


def make_rstuf_client(config: Config) -> rstuf_client.RstufClient:
    return rstuf_client.RstufClient(
        config.rstuf_url or "",
        token=config.rstuf_token,
        timeout=(config.connect_timeout, config.timeout),
        retries=config.retries,
        backoff=config.backoff,
        poll_interval=config.rstuf_poll,
        user_agent=USER_AGENT,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    configure_summary_logging()
    config = config_from_args(args)
    pypi = PypiClient(config.pypi_url, config)
    try:
        rstuf = make_rstuf_client(config) if config.rstuf_url else None
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        return Sync(config, pypi, rstuf, Progress(config.progress)).run()
    except MirrorLocked as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except (UpstreamError, StateError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except OSError as exc:
        log.error("local I/O error: %s (nothing past the last durable state was recorded)", exc)
        return EXIT_FAILED
    finally:
        pypi.close()
        if rstuf is not None:
            rstuf.close()


if __name__ == "__main__":
    sys.exit(main())
