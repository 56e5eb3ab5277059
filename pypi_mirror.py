"""Keep a local mirror of PyPI's simple index, and RSTUF, in step with PyPI.

The first run (or ``--full-check``) compares PyPI's whole project listing with
the mirror and fetches what is missing or behind. Later runs read PyPI's
changelog since the serial in ``state.json``, fetch each project it mentions
once, and let the page decide: 200 writes the bytes exactly as served, 404
removes the project. Every changed page is queued in a durable outbox for
RSTUF, which signs it for TUF clients.

This module is the orchestration (`Sync`) and the command line (`main`); each
concern it orchestrates has a module of its own beside it:

- ``settings.py``: every option (flag, environment, config file) and `Config`;
- ``pypi_client.py``: the only code that speaks to PyPI (its XML-RPC answers are
  parsed by ``xmlrpc_stream.py``);
- ``changelog.py``: what the changelog and the listing mean (pure);
- ``sync_plan.py``: what a run fetches and rewrites, from what it read (pure);
- ``root_index.py``: the root page, rendered and merged as a stream (pure);
- ``mirror_writer.py``: the only code that changes the served tree;
- ``state.py``: state.json, with the RSTUF outbox;
- ``rstuf_outbox.py`` and ``rstuf_client.py``: delivering changes to RSTUF;
- ``http_retry.py``: when both HTTP clients retry, and how much of an answer they read;
- ``mirror_store.py``: the disk's rules (names, paths, hashing, the lock);
- ``cli_support.py``: version, exit codes, logging, the one error funnel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import rstuf_client
import settings
from changelog import Listing, add_listed, identity_changes, merge_pending, projects_to_refresh
from cli_support import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    configure_logging,
    failure,
    run_cli,
)
from http_retry import call_with_retries
from mirror_store import (
    MirrorLayout,
    clear_staging,
    crash_point,
    digest_bytes,
    digest_file,
    mirror_lock,
    prefixed_name,
    project_target,
    sync_filesystem,
)
from mirror_writer import Change, MirrorWriter
from page_formats import ALL_FORMATS, HTML, JSON, SIMPLE_FORMATS, PageFormat
from progress import Progress
from project_filter import ProjectFilter
from pypi_client import (
    FetchedPage,
    PypiClient,
    UpstreamError,
    XmlRpcUnavailable,
)
from root_index import (
    iter_json_root,
    iter_root_index,
    merge_root,
    render_json_root_lines,
    render_root_lines,
)
from rstuf_outbox import RstufDelivery, WaitBudget
from run_status import StatusRecorder, show_status
from settings import Config, config_from
from state import PendingProject, State, clear_state_temps, load_state, save_state
from sync_plan import (
    current_projects,
    forms_answer,
    full_sync_fetches,
    json_root_changes,
    root_changes,
)

log = logging.getLogger("pypi_mirror")
# The one line every run ends with; logged at INFO even under -q (see `run`).
summary_log = logging.getLogger("pypi_mirror.summary")

T = TypeVar("T")
XMLRPC_SOURCE = "XML-RPC changelog"
JSON_ROOT_SOURCE = "JSON root /simple/"


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
    rstuf_waited: float = 0.0  # seconds spent on RSTUF, out of --rstuf-wait
    serial_before: int | None = None
    serial_after: int | None = None
    upstream_serial: int | None = None  # PyPI's last serial, as this run saw it
    upstream_seen: float | None = None  # when (epoch seconds)
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"summary added={self.added} updated={self.updated} removed={self.removed} "
            f"unchanged={self.unchanged} failed={self.failed} requests={self.requests} "
            f"rstuf_sent={self.rstuf_sent} rstuf_waited={self.rstuf_waited:.1f}s "
            f"elapsed={self.elapsed:.1f}s "
            f"serial={self.serial_before}->{self.serial_after}"
        )


@dataclass
class Refreshed:
    """What `Sync.refresh` learned beyond the pages it wrote."""

    failed: set[str] = field(default_factory=set)  # kept pending
    unlisted: set[str] = field(default_factory=set)  # fetched: gone or quarantined
    serials: dict[str, int] = field(default_factory=dict)  # page serials unlike the wanted ones

    def serial(self, name: str, item: PendingProject) -> int:
        """The serial of the page fetched for `name` (wanted as `item`)."""
        return self.serials.get(name, item.serial)

    def lists(self, name: str, if_failed: bool = True) -> bool:
        """Whether `name` belongs in the root index; `if_failed` when its fetch failed."""
        if name in self.failed:
            return if_failed
        return name not in self.unlisted


@dataclass(frozen=True)
class ProjectPages:
    """A project's page in each mirrored form as fetched, and as the mirror held it before."""

    pages: list[FetchedPage]
    olds: list[bytes | None]


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
        self.forms = SIMPLE_FORMATS[config.simple_format]
        self.filter = config.project_filter
        self.source = JSON_ROOT_SOURCE if config.no_xmlrpc else XMLRPC_SOURCE
        self.source_noted = False
        self.membership_changed = False
        self.budget = WaitBudget(config.rstuf_wait)  # one for the whole run
        self.delivery: RstufDelivery | None = None
        self.pages_changed = False
        self.status = StatusRecorder(
            self.layout.status_file, self.layout.staging_dir, config.metrics_file
        )
        self.started = time.monotonic()

    # the run

    def run(self) -> int:
        self.started = time.monotonic()
        with mirror_lock(self.layout.lock_path), self.recording():
            clear_staging(self.layout.staging_dir)
            clear_state_temps(self.config.state_file)
            self.state = load_state(self.config.state_file)
            self.writer = MirrorWriter(self.layout, self.state)
            self.summary.serial_before = self.state.serial
            self.forget_rstuf_if_disabled()
            if self.state.outbox.dirty and not self.config.dry_run:
                # a killed run may have left pages unflushed: never register bytes
                # that a power cut could still take back
                sync_filesystem(self.layout.root)
            self.deliver_outbox(wait=False)  # old tasks get their publish while we update
            for name in [n for n in self.state.pending if not self.filter.allows(n)]:
                del self.state.pending[name]  # excluded now: never fetched again
            if self.needs_full_sync():
                self.full_sync()
            else:
                self.update()
            self.state.filters = self.filter
            if not self.config.dry_run:
                sync_filesystem(self.layout.root)  # every page durable before the serial moves
                self.save("run-end")
                self.deliver_outbox(wait=True)
                # after the delivery: what RSTUF just confirmed frees the copies it replaced
                self.writer.collect_retired(self.config.grace)
                self.save()
        for problem in dict.fromkeys(self.summary.problems):  # each once, in order
            log.warning("%s", problem)
        summary_log.info("%s", self.summary.line())
        return self.exit_code()

    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.summary.problems or self.state.pending else EXIT_OK

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record the run in status.json (and --metrics-file) when it starts and however it ends.

        The one place a run's end is recorded, inside the lock: an exception
        (a failure, SIGTERM) is recorded with its exit code and line, then goes on
        to `run_cli`. A dry run changes nothing, so it records nothing.
        """
        if self.config.dry_run:
            yield
            return
        unread = self.state  # replaced when state.json is loaded; kept if that failed
        self.status.begin()
        exit_code, error = EXIT_FAILED, None
        try:
            yield
            exit_code = self.exit_code()
        except BaseException as exc:
            exit_code, error = failure(exc)
            raise
        finally:
            self.summary.serial_after = self.state.serial
            self.summary.requests = self.pypi.requests_made
            self.summary.rstuf_waited = self.budget.spent
            self.summary.elapsed = time.monotonic() - self.started
            loaded = self.state if self.state is not unread else None
            self.status.end(exit_code, error, self.summary, loaded)

    def upstream_last_serial(self) -> int:
        """PyPI's last changelog serial, noted for the status file (the lag behind it)."""
        serial = self.pypi.changelog_last_serial()
        self.summary.upstream_serial, self.summary.upstream_seen = serial, time.time()
        return serial

    def needs_full_sync(self) -> bool:
        state = self.state
        if state.serial is not None and state.formats != self.form_words:
            log.info(
                "page forms change from %s to %s: checking every project",
                "+".join(state.formats),
                "+".join(self.form_words),
            )
            return True
        return state.serial is None or state.full_sync_in_progress or self.config.full_check

    @property
    def form_words(self) -> tuple[str, ...]:
        return tuple(form.word for form in self.forms)

    def save(self, why: str = "") -> None:
        """Write state.json (not in a dry run); `why` names the moment for the crash tests."""
        if not self.config.dry_run:
            crash_point("state-save", (why,))
            save_state(self.config.state_file, self.state)

    # where changes come from: PyPI's XML-RPC changelog, or its JSON root

    def note_source(self) -> None:
        """Log, once a run, what the mirror follows PyPI through."""
        if not self.source_noted:
            self.source_noted = True
            why = " (--no-xmlrpc)" if self.config.no_xmlrpc else ""
            log.info("following PyPI through its %s%s", self.source, why)

    def fall_back(self, error: XmlRpcUnavailable) -> None:
        """XML-RPC is gone: use the JSON root for the rest of the run (said once)."""
        log.warning(
            "%s; following PyPI through its %s instead (--no-xmlrpc skips the attempt)",
            error,
            JSON_ROOT_SOURCE,
        )
        self.source = JSON_ROOT_SOURCE
        self.source_noted = True

    def fetch_listing(self) -> tuple[Listing, int]:
        """Every project PyPI lists (filtered) with its serial, and PyPI's serial then.

        Through XML-RPC the serial is taken before the listing; the JSON root
        carries its own (``X-PyPI-Last-Serial``, as cached by the CDN with it).
        """
        allows = None if self.filter.everything else self.filter.allows
        if self.source == XMLRPC_SOURCE:
            wanted = Listing()
            try:
                last_serial = self.upstream_last_serial()
                self.pypi.list_packages_with_serial(
                    functools.partial(add_listed, wanted, allows=allows)
                )
                self.note_source()
                return wanted, last_serial
            except XmlRpcUnavailable as exc:
                self.fall_back(exc)
        wanted = Listing()
        last_serial = self.pypi.list_projects_json(
            functools.partial(add_listed, wanted, allows=allows)
        )
        self.summary.upstream_serial, self.summary.upstream_seen = last_serial, time.time()
        self.note_source()
        return wanted, last_serial

    # first sync and --full-check

    def full_sync(self) -> None:
        """Compare PyPI's whole listing with the mirror and fix every difference.

        The target serial is taken before the listing and lowered to the
        listing's newest serial (PyPI caches the listing for up to an hour), so
        the next update replays anything the listing did not show yet. A first
        sync records nothing for RSTUF: RSTUF is bootstrapped from the CSV.
        Projects the filter excludes are removed without a fetch, and pages in
        forms no longer mirrored are removed.
        """
        first = self.state.serial is None and not any(
            self.layout.path_of_target(form.root_target).exists() for form in ALL_FORMATS
        )
        wanted, last_serial = self.fetch_listing()
        target = min(last_serial, max(wanted.serials.values(), default=last_serial))
        log.info(
            "%s: %d projects listed at serial %d",
            "first sync" if first else "full check",
            len(wanted),
            target,
        )
        if not self.state.full_sync_in_progress:
            self.state.full_sync_in_progress = True
            self.save("full-sync-started")
        local = self.writer.local_projects()
        excluded = {name for name in local if not self.filter.allows(name)}
        local -= excluded
        serials: dict[str, int] = {}  # page serials newer than the listing's, for the JSON root
        if self.config.full_check:  # archiving leaves the serial as it was: fetch them all
            current: set[str] = set()
        else:
            on_disk = functools.partial(self.on_disk_serial, wanted, serials)
            current = current_projects(wanted, local, on_disk, self.state.pending)
        to_fetch = full_sync_fetches(wanted, local, current, self.state.pending)
        self.summary.unchanged += len(current)
        outcome = self.refresh(to_fetch, record_changes=not first)
        self.remove_projects(excluded, record_changes=not first)
        self.drop_other_forms(local, record_changes=not first)
        serials.update(outcome.serials)
        for name in outcome.failed & local:  # listed with the serial of the page still served
            serials[name] = self.writer.local_serial(name, self.forms[0].basename) or 0
        names = sorted(wanted)
        self.write_roots(
            lambda: (
                (name, item.display_name, serials.get(name, item.serial))
                for name in names
                if outcome.lists(name, if_failed=name in local)
                for item in (wanted[name],)
            ),
            record_change=not first,
        )
        self.state.serial = target if self.state.serial is None else max(self.state.serial, target)
        self.state.formats = self.form_words
        self.state.full_sync_in_progress = False

    def on_disk_serial(self, wanted: Listing, serials: dict[str, int], name: str) -> int | None:
        """The serial of a listed project's pages on disk; None unless every form is there.

        Read from the page itself (the first form's trailer or JSON ``meta``),
        never from a per-project record; one newer than the listing is noted in
        `serials` for the JSON root (such a project is current).
        """
        primary, *others = self.forms
        serial = self.writer.local_serial(name, primary.basename)
        if serial is None:
            return None
        if any(not self.layout.project_page(name, form.basename).exists() for form in others):
            return None
        if serial > wanted.serials[name]:
            serials[name] = serial
        return serial

    def drop_other_forms(self, local: set[str], record_changes: bool) -> None:
        """Remove the pages and root of forms no longer mirrored (after a --simple-format change).

        Only when the state says such pages were made, or on --full-check
        (which also clears strays): otherwise the mirror cannot hold any.
        """
        dropped = [form for form in ALL_FORMATS if form not in self.forms]
        if not dropped or not (
            set(self.state.formats) - set(self.form_words) or self.config.full_check
        ):
            return
        batch: list[list[Change]] = []
        for name in sorted(local):
            group = self.removals(name, dropped)
            if group:
                batch.append(group)
            if len(batch) >= self.BATCH:
                self.apply_batch(batch, record_changes, count=False)
                batch = []
        self.apply_batch(batch, record_changes, count=False)
        for form in dropped:
            self.remove_root(form, record_changes)

    def remove_root(self, form: PageFormat, record_change: bool) -> None:
        """Remove a root index (its form is no longer mirrored); its copy keeps its grace."""
        path = self.layout.path_of_target(form.root_target)
        if not path.exists():
            return
        if self.config.dry_run:
            self.out(f"remove {form.root_target}")
            return
        old_digest = digest_file(path).hexdigest
        self.writer.retire(path.parent / prefixed_name(old_digest, path.name))
        if record_change and self.owes_rstuf:
            self.state.outbox.owe({form.root_target: old_digest})
        self.save("root-intent")  # intent first, as for pages
        path.unlink()

    # the project filter

    def apply_filter_change(self) -> ProjectFilter | None:
        """Bring the mirror in line with --include/--exclude if they changed since the last run.

        Projects now excluded are removed (pages, roots, RSTUF) at once, found
        by one directory scan. Returns the filter the mirror followed before
        when the new one may admit projects it did not (their names come from
        a listing), else None.
        """
        before = self.state.filters
        if before == self.filter:
            return None
        log.info("project filter: %s (was: %s)", self.filter.describe(), before.describe())
        if not before.admits_only_part_of(self.filter):
            excluded = {n for n in self.writer.local_projects() if not self.filter.allows(n)}
            log.info("%d mirrored projects are now excluded: removing them", len(excluded))
            self.remove_projects(excluded, record_changes=True)
        return None if self.filter.admits_only_part_of(before) else before

    def remove_projects(self, names: Iterable[str], record_changes: bool) -> None:
        """Remove every page of `names` without fetching them (the filter excludes them)."""
        batch: list[list[Change]] = []
        for name in sorted(names):
            group = self.removals(name, ALL_FORMATS)
            if group:
                batch.append(group)
            if len(batch) >= self.BATCH:
                self.apply_batch(batch, record_changes)
                batch = []
        self.apply_batch(batch, record_changes)
        for name in names:
            self.state.pending.pop(name, None)

    def removals(self, name: str, forms: Iterable[PageFormat]) -> list[Change]:
        gone = FetchedPage(name, None, None, None)
        changes = []
        for form in forms:
            old = self.writer.read_page(name, form.basename)
            if old is not None:
                changes.append(Change(name, name, gone, old, form.basename))
        return changes

    # updates

    def update(self) -> None:
        """Apply what changed since ``state.serial``: from the changelog, or the JSON root."""
        widened_from = self.apply_filter_change()
        if self.source == XMLRPC_SOURCE:
            try:
                self.update_from_changelog(widened_from)
                return
            except XmlRpcUnavailable as exc:  # raised before anything was fetched
                self.fall_back(exc)
        self.update_from_listing(widened_from)

    def update_from_changelog(self, widened_from: ProjectFilter | None) -> None:
        """Apply the changelog since ``state.serial``: fetch each mentioned project once."""
        since = self.state.serial
        assert since is not None
        last_serial = self.upstream_last_serial()
        self.note_source()
        to_fetch: dict[str, PendingProject] = {}
        newest = since
        renamed: set[str] = set()  # renamed, created or removed: see identity_changes
        for entries in self.pypi.changelog_since(since, last_serial):
            for name, item in projects_to_refresh(entries).items():
                if self.filter.allows(name):
                    merge_pending(to_fetch, name, item)
            renamed |= identity_changes(entries)
            newest = entries[-1].serial
        if widened_from is not None:  # the filter admits more now: fetch just those
            listing, _ = self.fetch_listing()
            for name in listing:
                if not widened_from.allows(name):
                    merge_pending(to_fetch, name, listing[name])
        for name, item in self.state.pending.items():
            merge_pending(to_fetch, name, item)
        log.info("changelog %d->%d: %d projects to refresh", since, newest, len(to_fetch))
        outcome = self.refresh(to_fetch, record_changes=True)
        self.finish_update(to_fetch, outcome, renamed)
        self.state.serial = newest

    def update_from_listing(self, widened_from: ProjectFilter | None) -> None:
        """Without XML-RPC: fetch every project whose listed serial passed ``state.serial``.

        The mirror holds every project at ``state.serial`` or newer (failures
        wait in ``pending``), so a listed ``_last-serial`` above it is exactly
        a change since: no per-project record is needed. A project the mirror
        lists that the JSON root no longer does is fetched once and its page
        decides (404: removed; quarantined: page kept, unlisted). PyPI's CDN
        caches the root up to 30 minutes, so changes can show that late.
        """
        since = self.state.serial
        assert since is not None
        listing, root_serial = self.fetch_listing()
        to_fetch: dict[str, PendingProject] = {}
        for name, serial in listing.serials.items():
            if serial > since or (widened_from is not None and not widened_from.allows(name)):
                to_fetch[name] = listing[name]
        renamed: set[str] = set()  # removed and created again under another spelling
        unlisted: dict[str, str] = {}
        for name, display in self.iter_root_members():
            if name not in listing:
                unlisted[name] = display
            elif listing.displays.get(name, name) != display:
                renamed.add(name)
        for name, item in self.state.pending.items():
            merge_pending(to_fetch, name, item)
        for name, display in unlisted.items():  # a 404 now means removed, whatever was pending
            serial = to_fetch[name].serial if name in to_fetch else 0
            to_fetch[name] = PendingProject(display, serial, expect_page=False)
        log.info(
            "JSON root at serial %d: %d projects listed; %d changed since %d, %d no longer listed",
            root_serial,
            len(listing),
            len(to_fetch) - len(unlisted),
            since,
            len(unlisted),
        )
        del listing
        outcome = self.refresh(to_fetch, record_changes=True)
        self.finish_update(to_fetch, outcome, renamed)
        self.state.serial = max(since, root_serial)

    def iter_root_members(self) -> Iterator[tuple[str, str]]:
        """(normalized, display) of every project the mirror lists, streamed from its root."""
        if HTML in self.forms and self.layout.root_page.exists():
            with open(self.layout.root_page, "rb") as current:
                yield from iter_root_index(current)
        elif self.layout.json_root_page.exists():
            with open(self.layout.json_root_page, "rb") as current:
                for name, (display, _serial) in iter_json_root(current):
                    yield name, display

    def finish_update(
        self,
        to_fetch: Mapping[str, PendingProject],
        outcome: Refreshed,
        renamed: set[str],
    ) -> None:
        """Merge what the fetched pages say into the root indexes, if anything they show moved.

        The HTML root lists names (`root_changes` says when it moves); the JSON
        root also each project's serial, so any page change moves it.
        """
        fetched = to_fetch.keys() - outcome.failed
        membership = self.membership_changed or self.state.root_stale
        html = root_changes(to_fetch, fetched, outcome.lists, renamed, membership)
        json_lines = None
        if html is not None or self.pages_changed:
            json_lines = json_root_changes(to_fetch, fetched, outcome.lists, outcome.serial)
        self.rewrite_roots(html, json_lines)

    # the root indexes

    def rewrite_roots(
        self,
        html_changes: dict[str, str | None] | None,
        json_changes: dict[str, tuple[str, int] | None] | None,
    ) -> None:
        """Merge the changes into each mirrored root (None: it stays), streaming it from disk.

        A merge also drops any project the filter excludes, so a run killed
        between removing excluded projects and this never leaves them listed.
        """
        for form in self.forms:
            if form is HTML and html_changes is not None:
                members = self.filtered(self.merged(form, iter_root_index, html_changes))
                self.write_root(form, members, True)
            elif form is JSON and json_changes is not None:
                merged = self.filtered(self.merged(form, iter_json_root, json_changes))
                self.write_root(form, ((n, d, s) for n, (d, s) in merged), True)

    def merged(self, form: PageFormat, read: Callable, changes: dict) -> Iterator[tuple[str, T]]:
        try:
            with open(self.layout.path_of_target(form.root_target), "rb") as current:
                yield from merge_root(read(current), changes)
        except FileNotFoundError:
            yield from merge_root([], changes)

    def filtered(self, members: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
        if self.filter.everything:
            yield from members
        else:
            yield from ((name, rest) for name, rest in members if self.filter.allows(name))

    def write_roots(
        self, members: Callable[[], Iterable[tuple[str, str, int]]], record_change: bool
    ) -> None:
        """Write every mirrored form's root from sorted (normalized, display, serial) triples."""
        for form in self.forms:
            if form is HTML:
                self.write_root(form, ((n, d) for n, d, _s in members()), record_change)
            else:
                self.write_root(form, members(), record_change)

    def write_root(self, form: PageFormat, members: Iterable[tuple], record_change: bool) -> None:
        """Write one root index from sorted members if its bytes change."""
        path = self.layout.path_of_target(form.root_target)
        directory, basename = path.parent, path.name
        lines = render_root_lines(members) if form is HTML else render_json_root_lines(members)
        temp, digest = self.writer.stage(lines, keep=not self.config.dry_run)
        old_digest = self.writer.root_digest(path)
        if digest == old_digest:
            self.writer.discard(temp)
            if not self.config.dry_run:
                self.writer.ensure_copy(directory, digest, basename)
                self.state.root_stale = False
            return
        if temp is None:  # dry run
            self.out(f"write {form.root_target}")
            return
        # Intent before action, as for pages: a run killed right after the write
        # finds the root unchanged, and would neither tell RSTUF nor retire the copy.
        old_copy = directory / prefixed_name(old_digest, basename) if old_digest else None
        if old_copy is not None:
            self.writer.retire(old_copy)
        if record_change and self.owes_rstuf:
            self.state.outbox.owe({form.root_target: old_digest})
        self.save("root-intent")
        directory.mkdir(parents=True, exist_ok=True)
        self.writer.install(directory, temp, digest, basename)
        if old_copy is not None:
            self.writer.retire(old_copy)  # the grace starts at the real replacement
        self.state.root_stale = False

    # fetching and applying

    def refresh(self, wanted: Mapping[str, PendingProject], record_changes: bool) -> Refreshed:
        """Fetch every project in `wanted` once, in every form, and apply what its pages say.

        Returns which projects failed, which were fetched but do not belong
        in the root index (gone, or quarantined), and the page serials that
        differ from `wanted`'s: all small, where a flag per project would be
        700,000 entries. Failures stay in ``state.pending``. With
        `record_changes`, each batch of changed paths is saved to the outbox
        before the batch touches the disk, so RSTUF hears of every write even
        if the run dies right after it.
        """
        outcome = Refreshed()
        self.progress.start(len(wanted), "fetching")
        batch: list[list[Change]] = []
        for name, fetched in self.fetch_all(wanted):
            self.progress.advance(failed=isinstance(fetched, Exception))
            item = wanted[name]
            if isinstance(fetched, Exception):
                self.keep_pending(name, item, fetched)
                outcome.failed.add(name)
                continue
            changes = [
                Change(name, item.display_name, page, old, form.basename)
                for form, page, old in zip(self.forms, fetched.pages, fetched.olds, strict=True)
            ]
            primary = changes[0]
            if not primary.listed_after():
                outcome.unlisted.add(name)
            elif primary.page.serial != item.serial:
                outcome.serials[name] = primary.page.serial or 0
            if not any(change.modifies for change in changes):
                self.summary.unchanged += primary.page.body is not None
                continue
            batch.append(changes)
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
    ) -> Iterator[tuple[str, ProjectPages | UpstreamError]]:
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

    def fetch_current(self, name: str, item: PendingProject) -> ProjectPages:
        """Fetch a project's page in every form, all from one moment and none older than needed.

        Retries while PyPI's CDN serves a page older than the changelog (a
        lower ``X-PyPI-Last-Serial``, or a 404 for a project the changelog's
        newest entry says exists) or while the forms disagree (see
        `sync_plan.forms_answer`); each retry fetches only the forms behind.
        Runs in a worker thread, which also reads the pages on disk: the main
        thread, which writes, then compares bytes without waiting on I/O, and a
        page identical to the mirror's is not parsed again. Raises StalePage
        or MissingPage.
        """
        olds = [self.writer.read_page(name, form.basename) for form in self.forms]
        pages: list[FetchedPage | None] = [None] * len(self.forms)
        behind: tuple[int, ...] = tuple(range(len(self.forms)))
        expected = item.serial

        def attempt() -> ProjectPages:
            nonlocal behind, expected
            for index in behind:
                fetch = functools.partial(self.fetch_form, self.forms[index], name, olds[index])
                pages[index] = self.pypi.with_retries(name, fetch)
            got = [page for page in pages if page is not None]
            answer = forms_answer(
                got, PendingProject(item.display_name, expected, item.expect_page)
            )
            if answer.problem is None:
                return ProjectPages(got, olds)
            behind, expected = answer.behind, answer.expected
            raise answer.problem

        return call_with_retries(attempt, self.pypi.retry_policy, name, log, logging.DEBUG)

    def fetch_form(self, form: PageFormat, name: str, known: bytes | None) -> FetchedPage:
        if form is JSON:
            return self.pypi.fetch_json_page(name, known)
        return self.pypi.fetch_page(name, known)

    def keep_pending(self, name: str, item: PendingProject, error: Exception) -> None:
        log.warning("%s; kept pending for the next run", error)
        merge_pending(self.state.pending, name, item)
        self.summary.failed += 1

    def apply_batch(
        self, batch: list[list[Change]], record_changes: bool, count: bool = True
    ) -> None:
        """Apply each project's changed pages (a group per project, its first form first)."""
        if not batch:
            return
        changes = [change for group in batch for change in group if change.modifies]
        if self.config.dry_run:
            for change in changes:
                verb = "remove" if change.removes else "write"
                self.out(f"{verb} {project_target(change.name, change.basename)}")
            return
        membership = any(group[0].listed_before() != group[0].listed_after() for group in batch)
        self.membership_changed |= membership
        self.pages_changed = True
        retiring = [self.writer.prepare(change) for change in changes]
        if record_changes and self.owes_rstuf:
            self.state.outbox.owe(
                {
                    project_target(c.name, c.basename): c.old and digest_bytes(c.old).hexdigest
                    for c in changes
                }
            )
        if record_changes:
            # the JSON root shows every project's serial: any page change moves it
            self.state.root_stale |= membership or JSON in self.forms
        if record_changes or any(retiring):
            self.save("batch-intent")  # durable before the batch touches the disk
        for change in changes:
            self.writer.apply(change)
        if count:
            for group in batch:
                self.count(group)

    def count(self, group: list[Change]) -> None:
        if group[0].removes:
            self.summary.removed += 1
        elif all(change.old is None for change in group):
            self.summary.added += 1
        else:
            self.summary.updated += 1

    # RSTUF

    @property
    def owes_rstuf(self) -> bool:
        """Whether changes are kept for RSTUF (everything but --no-rstuf)."""
        return not self.config.no_rstuf

    def forget_rstuf_if_disabled(self) -> None:
        """--no-rstuf: whatever an earlier run kept for RSTUF is dropped, once."""
        if self.owes_rstuf or self.config.dry_run:
            return
        box = self.state.outbox
        if box.dirty or box.tasks or box.publishes or box.uncertain or box.signed:
            owed = box.clear()
            self.save()
            log.info(
                "--no-rstuf: dropped %d change(s) kept for RSTUF; when RSTUF is enabled, "
                "catch it up with --audit --repair",
                owed,
            )

    def deliver_outbox(self, wait: bool) -> None:
        """Deliver the outbox; `wait` (the end of the run) follows tasks within the budget."""
        box = self.state.outbox
        if not self.owes_rstuf:
            return
        if self.config.dry_run:
            for path in sorted(box.dirty):
                exists = self.layout.path_of_target(path).exists()
                self.out(f"rstuf-{'add' if exists else 'remove'} {path}")
            return
        if not (box.dirty or box.tasks or box.publishes or box.uncertain):
            return
        if self.rstuf is None:
            if wait:  # once, at the end of the run
                self.summary.problems.append(
                    f"{len(box)} change(s) wait in the outbox for RSTUF: set --rstuf-url "
                    "(or RSTUF_API_URL), or --no-rstuf to run without RSTUF"
                )
            return
        if self.delivery is None:
            self.delivery = RstufDelivery(
                self.state,
                self.layout,
                self.rstuf,
                self.save_delivery_step,
                batch=self.config.rstuf_batch,
                budget=self.budget,
            )
        self.progress.start(self.unconfirmed(), "delivering", unit="paths")
        report = self.delivery.deliver(wait)
        self.progress.finish()
        self.summary.rstuf_sent += report.sent
        self.writer.restart_grace(report.superseded)
        self.save("delivered")
        self.summary.problems.extend(f"RSTUF: {error}" for error in report.errors)

    def unconfirmed(self) -> int:
        """Outbox paths RSTUF has not confirmed: len(outbox) without its set union (cheap)."""
        box = self.state.outbox
        return len(box.dirty) + sum(len(task.paths) for task in box.tasks)

    def save_delivery_step(self) -> None:
        """Save a durable step of the RSTUF delivery, and show how far the delivery got."""
        self.save()
        if self.progress.phase is not None:
            self.progress.update_to(self.progress.phase.total - self.unconfirmed())


# --- main

DESCRIPTION = (
    "Mirror PyPI's simple index and keep RSTUF in step. The first run syncs every "
    "project; later runs apply PyPI's changelog since the serial in the state file."
)
EPILOG = (
    "The RSTUF token is read only from the environment (RSTUF_API_TOKEN). "
    "Exit codes: 0 done; 1 failed (state not advanced past what is on disk); 2 usage "
    "error; 3 another run holds the mirror lock; 75 partly done (pages or RSTUF changes "
    "kept for the next run, also when changes are owed to RSTUF and no RSTUF URL is set: "
    "--no-rstuf runs without RSTUF); 130 stopped by SIGINT; 143 stopped by SIGTERM."
)


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser("pypi_mirror.py", DESCRIPTION, EPILOG)


def make_rstuf_client(config: Config) -> rstuf_client.RstufClient:
    return rstuf_client.RstufClient(
        config.rstuf_url or "",
        token=config.rstuf_token,
        timeout=(config.connect_timeout, config.timeout),
        retries=config.retries,
        backoff=config.backoff,
        poll_interval=config.rstuf_poll,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse settings, run once, return the exit code."""
    configure_logging(False, False)
    return run_cli(log, lambda: run(config_from(argv, build_parser())))


def run(config: Config) -> int:
    configure_logging(config.verbose, config.quiet)
    if config.status:
        return show_status(MirrorLayout(config.mirror_dir).status_file, config.status_json)
    if config.metrics_file is not None and not config.metrics_file.parent.is_dir():
        raise UsageError(f"--metrics-file {config.metrics_file}: no such directory")
    summary_log.setLevel(logging.INFO)  # cron keeps one line per run, even under -q
    pypi = PypiClient(config.pypi_url, config)
    try:
        rstuf = make_rstuf_client(config) if config.rstuf_url else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress(config.progress, config.progress_interval)
    try:
        return Sync(config, pypi, rstuf, progress).run()
    finally:
        progress.close()
        pypi.close()
        if rstuf is not None:
            rstuf.close()


if __name__ == "__main__":
    sys.exit(main())
