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
- ``pypi_client.py``: the only code that speaks to PyPI;
- ``changelog.py``: what the changelog and the listing mean (pure);
- ``root_index.py``: the root page, rendered and merged as a stream (pure);
- ``mirror_writer.py``: the only code that changes the served tree;
- ``state.py``: state.json, with the RSTUF outbox;
- ``rstuf_outbox.py`` and ``rstuf_client.py``: delivering changes to RSTUF;
- ``mirror_store.py``: the disk's rules (names, paths, hashing, the lock);
- ``tuf_audit.py``: the served tree held against what RSTUF's TUF metadata signs
  (``--audit``; ``--repair`` fixes what it finds through `Sync.refresh`);
- ``cli_support.py``: version, exit codes, logging, the one error funnel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import rstuf_client
import settings
import tuf_audit
from changelog import Listing, add_listed, identity_changes, merge_pending, projects_to_refresh
from cli_support import (
    EXIT_AUDIT_DIFFERS,
    EXIT_OK,
    EXIT_PARTIAL,
    ToolError,
    UsageError,
    configure_logging,
    run_cli,
)
from mirror_store import (
    ROOT_TARGET,
    InvalidProjectName,
    MirrorLayout,
    clear_staging,
    crash_point,
    digest_file,
    mirror_lock,
    prefixed_name,
    project_dir_name,
    project_target,
    sync_filesystem,
)
from mirror_writer import Change, MirrorWriter
from progress import Progress
from pypi_client import (
    USER_AGENT,
    FetchedPage,
    MissingPage,
    PypiClient,
    StalePage,
    UpstreamError,
    retry_delay,
)
from root_index import iter_root_index, merge_root, render_root_lines
from rstuf_outbox import RstufDelivery
from settings import Config, config_from
from state import PendingProject, State, StateError, clear_state_temps, load_state, save_state

log = logging.getLogger("pypi_mirror")
# The one line every run ends with; logged at INFO even under -q (see `main`).
summary_log = logging.getLogger("pypi_mirror.summary")


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
        self.bootstrap_refusal: str | None = None  # why this run keeps changes from RSTUF

    # the run

    def run(self) -> int:
        started = time.monotonic()
        with mirror_lock(self.layout.lock_path):
            clear_staging(self.layout.staging_dir)
            clear_state_temps(self.config.state_file)
            self.state = load_state(self.config.state_file)
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
            save_state(self.config.state_file, self.state)

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
        if not self.bootstrap_imported():
            return
        report = RstufDelivery(
            self.state,
            self.layout,
            self.rstuf,
            self.save,
            wait=self.config.rstuf_wait,
            batch=self.config.rstuf_batch,
        ).deliver()
        self.summary.rstuf_sent += report.sent
        self.writer.restart_grace(report.confirmed)
        self.save()
        self.summary.problems.extend(f"RSTUF: {error}" for error in report.errors)

    def bootstrap_imported(self) -> bool:
        """Whether RSTUF holds the bootstrap import, checked once before the first delivery.

        An update delivered before the operator imported the bootstrap CSV makes
        that import abort on a duplicate path (or, with another importer, lets
        older rows overwrite newer ones). With a TUF metadata URL configured,
        the first delivery after a first sync therefore checks that RSTUF's
        verified metadata signs the root index, the CSV's first row; until it
        does, changes stay in the outbox. Without a metadata URL nothing is
        checked (as before).
        """
        if self.state.bootstrap_seen or self.config.tuf_metadata_url is None:
            return True
        if self.bootstrap_refusal is None:
            waiting = f"{len(self.state.outbox)} change(s) stay in the outbox"
            try:
                signed = tuf_audit.signed_target(audit_settings(self.config), ROOT_TARGET)
            except tuf_audit.AuditError as exc:
                self.bootstrap_refusal = (
                    f"cannot check that RSTUF holds the bootstrap import ({exc}); {waiting}"
                )
            else:
                if signed is not None:
                    self.state.bootstrap_seen = True
                    self.save()
                    return True
                self.bootstrap_refusal = (
                    f"RSTUF's TUF metadata does not sign {ROOT_TARGET}: the bootstrap import "
                    "has not been done. Write the CSV with `python3 generate_csv.py`, import it "
                    "with `rstuf admin import-artifacts --db-uri ... --csv artifacts.csv`, and "
                    f"let RSTUF publish; until then {waiting}"
                )
            self.summary.problems.append(self.bootstrap_refusal)
        return False

    # the audit and its repair

    def run_audit(self) -> int:
        """``--audit [--repair]``: every difference between the served tree and TUF's targets.

        Prints one ``KIND PATH`` line per difference and the audit's summary
        line on stdout. Holds the mirror lock, so no sync changes pages while
        they are compared; without `repair` nothing is written, not even
        state.json. Raises tuf_audit.AuditError when the audit cannot run.
        """
        started = time.monotonic()
        served = self.layout.served_dir
        if not served.is_dir():
            raise ToolError(
                f"{served}: no served tree to audit (check --mirror-dir, or run pypi_mirror.py "
                "until its first sync finishes)"
            )
        with mirror_lock(self.layout.lock_path):
            try:
                self.state = load_state(self.config.state_file)
            except StateError as exc:
                if self.config.repair:  # it writes the outbox: see the README's recovery steps
                    raise
                log.warning("%s; auditing without it", exc)  # the audit is how to recover
            self.writer = MirrorWriter(self.layout, self.state)
            owed = self.state.outbox.dirty | self.state.outbox.in_flight_paths()
            owed_found: set[str] = set()
            differing: dict[str, tuf_audit.SignedTarget | None] = {}

            def emit(difference: tuf_audit.Difference) -> None:
                self.out(difference.line())
                if difference.path in owed:
                    owed_found.add(difference.path)
                if self.config.repair:
                    differing[difference.path] = difference.signed

            report = tuf_audit.audit(audit_settings(self.config), self.layout, emit)
            self.out(report.line())
            if owed_found:
                log.info(
                    "%d of the differing paths are changes the outbox still owes RSTUF; "
                    "a run with RSTUF delivers them",
                    len(owed_found),
                )
            if not self.config.repair:
                return EXIT_AUDIT_DIFFERS if report.differences else EXIT_OK
            self.summary.serial_before = self.summary.serial_after = self.state.serial
            failed = self.repair(differing) if differing else set()
        self.summary.requests = self.pypi.requests_made
        self.summary.elapsed = time.monotonic() - started
        for problem in self.summary.problems:
            log.warning("%s", problem)
        summary_log.info("%s", self.summary.line())
        return EXIT_PARTIAL if failed or self.summary.problems else EXIT_OK

    def repair(self, differing: Mapping[str, tuf_audit.SignedTarget | None]) -> set[str]:
        """Fix each difference at its source, through the sync's own refresh path.

        Every differing project is re-fetched from PyPI and written (the tree
        is never trusted over upstream, so a damaged page is replaced, not
        signed); its hash-prefixed copy is relinked; then each differing path
        whose final state RSTUF does not sign yet is queued in the outbox (an
        add, or a remove when upstream no longer has the project) and
        delivered. The root index, if it differs or a project came or went, is
        rebuilt from PyPI's listing. Returns the projects whose fetch failed:
        they stay pending and nothing of theirs is sent.
        """
        clear_staging(self.layout.staging_dir)
        clear_state_temps(self.config.state_file)
        projects: dict[str, list[str]] = {}
        for path in differing:
            name = project_of_target(path)
            if name is not None:
                projects.setdefault(name, []).append(path)
            elif path != ROOT_TARGET:
                log.warning("%s is not a page this mirror writes: remove it at RSTUF", path)
        log.info("repair: re-fetching %d project(s) from PyPI", len(projects))
        # serial 0: any page PyPI serves now is current; a 404 means the project is gone
        wanted = {name: PendingProject(name, 0) for name in projects}
        outcome = self.refresh(wanted, record_changes=True)
        for name in sorted(outcome.failed):
            log.warning("repair: %s could not be fetched; nothing of it is sent to RSTUF", name)
        paths = [p for name, ps in projects.items() if name not in outcome.failed for p in ps]
        if ROOT_TARGET in differing or self.membership_changed or self.state.root_stale:
            self.rebuild_root(outcome)  # queues the root itself if its bytes change
        if ROOT_TARGET in differing:
            paths.append(ROOT_TARGET)
        in_flight = self.state.outbox.in_flight_paths()
        for path in paths:
            self.settle(path, differing.get(path), in_flight)
        sync_filesystem(self.layout.root)  # never register bytes a power cut could take back
        self.save()
        self.deliver_outbox()
        return outcome.failed

    def rebuild_root(self, outcome: Refreshed) -> None:
        """Rewrite the root index from PyPI's listing: listed projects with a page on disk.

        The rule of a full sync's root; the root on disk is not trusted for it.
        """
        listing = Listing()
        self.pypi.list_packages_with_serial(functools.partial(add_listed, listing))
        local = self.writer.local_projects()
        members = (
            (name, listing[name].display_name)
            for name in sorted(listing)
            if name in local and outcome.lists(name)
        )
        self.write_root(members, record_change=True)

    def settle(self, path: str, signed: tuf_audit.SignedTarget | None, in_flight: set[str]) -> None:
        """Relink `path`'s copy, then queue it for RSTUF unless RSTUF signs it as it is now.

        A path RSTUF already signs byte for byte (a tampered page restored from
        PyPI, a copy relinked) needs nothing sent; a path in an unfinished task
        is queued anyway, since that task will change what RSTUF signs.
        """
        served = os.fspath(self.layout.served_dir)
        file = self.layout.path_of_target(path)
        if file.is_file():
            self.writer.ensure_copy(file.parent, digest_file(file).hexdigest, file.name)
        in_step = not tuf_audit.differences(
            path, signed, tuf_audit.read_disk_facts(served, path, signed)
        )
        if in_step and path not in in_flight:
            self.state.outbox.dirty.discard(path)
        else:
            self.state.outbox.dirty.add(path)


def project_of_target(path: str) -> str | None:
    """The project whose page `path` is (``simple/<name>/index.html``), or None."""
    name = path.removeprefix("simple/").partition("/")[0]
    if path != project_target(name):
        return None
    try:
        return name if project_dir_name(name) == name else None
    except InvalidProjectName:
        return None


def audit_settings(config: Config) -> tuf_audit.AuditConfig:
    """The audit's settings from the run's (its timeouts, retries and fetch threads)."""
    if config.tuf_metadata_url is None or config.tuf_root is None:
        raise UsageError("--tuf-metadata-url and --tuf-root are needed")
    return tuf_audit.AuditConfig(
        metadata_url=config.tuf_metadata_url,
        trusted_root=config.tuf_root,
        fetch_workers=config.workers,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
        retries=config.retries,
        backoff=config.backoff,
    )


# --- main

DESCRIPTION = (
    "Mirror PyPI's simple index and keep RSTUF in step. The first run syncs every "
    "project; later runs apply PyPI's changelog since the serial in the state file."
)
EPILOG = (
    "The RSTUF token is read only from the environment (RSTUF_API_TOKEN). "
    "Exit codes: 0 done (--audit: the tree and TUF's targets agree); 1 failed (state not "
    "advanced past what is on disk; --audit: metadata unreachable, badly signed or expired); "
    "2 usage error; 3 another run holds the mirror lock; 4 --audit found differences; 75 "
    "partly done (pages or RSTUF changes kept pending for the next run); 130 stopped by "
    "SIGINT; 143 stopped by SIGTERM."
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
        user_agent=USER_AGENT,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse settings, run once, return the exit code."""
    configure_logging(False, False)
    return run_cli(log, lambda: run(config_from(argv, build_parser())))


def run(config: Config) -> int:
    configure_logging(config.verbose, config.quiet)
    summary_log.setLevel(logging.INFO)  # cron keeps one line per run, even under -q
    pypi = PypiClient(config.pypi_url, config)
    try:
        rstuf = make_rstuf_client(config) if config.rstuf_url else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        sync = Sync(config, pypi, rstuf, Progress(config.progress))
        return sync.run_audit() if config.audit else sync.run()
    finally:
        pypi.close()
        if rstuf is not None:
            rstuf.close()


if __name__ == "__main__":
    sys.exit(main())
