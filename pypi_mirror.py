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
    ROOT_TARGET,
    MirrorLayout,
    clear_staging,
    crash_point,
    digest_bytes,
    mirror_lock,
    prefixed_name,
    project_target,
    sync_filesystem,
)
from mirror_writer import Change, MirrorWriter
from progress import Progress
from pypi_client import (
    FetchedPage,
    PypiClient,
    UpstreamError,
)
from root_index import iter_root_index, merge_root, render_root_lines
from rstuf_outbox import RstufDelivery, WaitBudget
from run_status import StatusRecorder, show_status
from settings import Config, config_from
from state import PendingProject, State, clear_state_temps, load_state, save_state
from sync_plan import current_projects, full_sync_fetches, root_changes, stale_answer

log = logging.getLogger("pypi_mirror")
# The one line every run ends with; logged at INFO even under -q (see `run`).
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
        self.budget = WaitBudget(config.rstuf_wait)  # one for the whole run
        self.delivery: RstufDelivery | None = None
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
            if self.needs_full_sync():
                self.full_sync()
            else:
                self.update()
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
        return state.serial is None or state.full_sync_in_progress or self.config.full_check

    def save(self, why: str = "") -> None:
        """Write state.json (not in a dry run); `why` names the moment for the crash tests."""
        if not self.config.dry_run:
            crash_point("state-save", (why,))
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
        last_serial = self.upstream_last_serial()
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
            self.save("full-sync-started")
        local = self.writer.local_projects()
        if self.config.full_check:  # archiving leaves the serial as it was: fetch them all
            current: set[str] = set()
        else:
            current = current_projects(wanted, local, self.writer.local_serial, self.state.pending)
        to_fetch = full_sync_fetches(wanted, local, current, self.state.pending)
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

    # updates from the changelog

    def update(self) -> None:
        """Apply the changelog since ``state.serial``: fetch each mentioned project once."""
        since = self.state.serial
        assert since is not None
        last_serial = self.upstream_last_serial()
        to_fetch: dict[str, PendingProject] = {}
        newest = since
        renamed: set[str] = set()  # renamed, created or removed: see identity_changes
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
        membership = self.membership_changed or self.state.root_stale
        changes = root_changes(to_fetch, fetched, outcome.lists, renamed, membership)
        if changes is not None:
            self.rewrite_root(changes)
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
        if record_change and self.owes_rstuf:
            self.state.outbox.owe({ROOT_TARGET: old_digest})
        self.save("root-intent")
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
            self.progress.advance(failed=isinstance(fetched, Exception))
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

        def attempt() -> FetchedPage:
            page = self.pypi.with_retries(name, lambda: self.pypi.fetch_page(name))
            if problem := stale_answer(page, item):
                raise problem
            return page

        return call_with_retries(attempt, self.pypi.retry_policy, name, log, logging.DEBUG)

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
        if record_changes and self.owes_rstuf:
            self.state.outbox.owe(
                {
                    project_target(change.name): change.old and digest_bytes(change.old).hexdigest
                    for change in batch
                }
            )
        if record_changes:
            self.state.root_stale |= membership
        if record_changes or any(retiring):
            self.save("batch-intent")  # durable before the batch touches the disk
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
