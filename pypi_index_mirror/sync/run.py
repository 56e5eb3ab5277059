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
- ``tuf_audit.py``: the served tree held against what RSTUF's TUF metadata signs
  (``--audit``; ``--repair`` fixes what it finds through `Sync.refresh`);
- ``safety.py``: state and mirror that know each other, the circuit breaker;
- ``dry_run.py``: the plan ``--dry-run`` prints;
- ``cli_support.py``: version, exit codes, logging, the one error funnel.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pypi_index_mirror.http.retry import Retryable, call_with_retries
from pypi_index_mirror.mirror.filters import ProjectFilter
from pypi_index_mirror.mirror.formats import ALL_FORMATS, HTML, JSON, SIMPLE_FORMATS, PageFormat
from pypi_index_mirror.mirror.roots import (
    iter_json_root,
    iter_root_index,
    merge_root,
    render_json_root_lines,
    render_root_lines,
)
from pypi_index_mirror.mirror.safety import (
    CircuitBreaker,
    FetchHalted,
    Halt,
    MirrorFacts,
    Verdict,
    canonical_url,
    check_identity,
    check_serial,
    has_project_pages,
    read_mirror_facts,
    write_marker,
)
from pypi_index_mirror.mirror.state import (
    PendingProject,
    State,
    StateError,
    clear_state_temps,
    load_state,
    new_mirror_id,
    refuse_legacy_default_state,
    save_state,
)
from pypi_index_mirror.mirror.store import (
    TUF_HASH_ALGORITHM,
    InvalidProjectName,
    MirrorLayout,
    clear_staging,
    crash_point,
    digest_file,
    hexdigest_of,
    mirror_lock,
    prefixed_name,
    project_dir_name,
    project_target,
    sync_filesystem,
)
from pypi_index_mirror.mirror.writer import Change, MirrorWriter
from pypi_index_mirror.ops import settings
from pypi_index_mirror.ops.cli import (
    EXIT_AUDIT_DIFFERS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    Stopped,
    ToolError,
    UsageError,
    configure_logging,
    deferred_stops,
    failure,
    run_cli,
    stop_requested,
)
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.settings import Config, config_from
from pypi_index_mirror.ops.status import StatusRecorder, show_status
from pypi_index_mirror.rstuf import client as rstuf_client
from pypi_index_mirror.rstuf.outbox import RstufDelivery, WaitBudget
from pypi_index_mirror.sync import dry_run, fetch_helper, revalidate
from pypi_index_mirror.sync.fetch_loop import FetchLoop
from pypi_index_mirror.sync.plan import (
    forms_answer,
    full_sync_fetches,
    json_root_changes,
    root_changes,
)
from pypi_index_mirror.sync.worker_pool import map_unordered
from pypi_index_mirror.upstream.changelog import (
    Listing,
    add_listed,
    identity_changes,
    merge_pending,
    projects_to_refresh,
)
from pypi_index_mirror.upstream.client import (
    FetchedPage,
    MissingPage,
    PypiClient,
    StalePage,
    Transient,
    UpstreamError,
    XmlRpcUnavailable,
    page_request,
)
from pypi_index_mirror.upstream.transport import PageAnswer, PageTransportError

if TYPE_CHECKING:
    # imported where an audit or the bootstrap check runs: python-tuf and its signers
    # (boto3 among them) were 20 MiB and a third of every run's start-up
    from pypi_index_mirror.audit import tuf as tuf_audit

log = logging.getLogger("pypi_mirror")
# The one line every run ends with, whatever its exit; INFO even under -q (see `main`).
summary_log = logging.getLogger("pypi_mirror.summary")

T = TypeVar("T")
XMLRPC_SOURCE = "XML-RPC changelog"
JSON_ROOT_SOURCE = "JSON root /simple/"


# --- the sync


@dataclass
class Summary:
    """The one line every run ends with, whatever its exit (see `main`)."""

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
    pending: int | None = None  # projects still to fetch; None: the state was not read
    outbox: int | None = None  # paths owed to RSTUF
    exit: int | None = None
    dry_run: bool = False
    would_fetch: int | None = None  # a dry run: pages a real run would fetch
    started: bool = False  # a sync began (not --help, --version)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        unknown = "?"
        mode = "dry-run " if self.dry_run else ""
        if self.would_fetch is not None:
            mode += f"would_fetch={self.would_fetch} "
        return (
            f"summary {mode}added={self.added} updated={self.updated} removed={self.removed} "
            f"unchanged={self.unchanged} failed={self.failed} requests={self.requests} "
            f"rstuf_sent={self.rstuf_sent} rstuf_waited={self.rstuf_waited:.1f}s "
            f"elapsed={self.elapsed:.1f}s "
            f"serial={self.serial_before}->{self.serial_after} "
            f"pending={unknown if self.pending is None else self.pending} "
            f"outbox={unknown if self.outbox is None else self.outbox} exit={self.exit}"
        )


class NotFetched:
    """The result of a page that fetching stopped before (circuit breaker, signal)."""


NOT_FETCHED = NotFetched()
STOP_POLL = 0.1  # seconds: how soon the fetch loop sees a signal


@dataclass
class Refreshed:
    """What `Sync.refresh` learned beyond the pages it wrote."""

    failed: set[str] = field(default_factory=set)  # kept pending
    unlisted: set[str] = field(default_factory=set)  # fetched: gone or quarantined
    serials: dict[str, int] = field(default_factory=dict)  # page serials unlike the wanted ones

    def serial(self, name: str, item: PendingProject) -> int:
        """The serial of the page fetched for `name` (wanted as `item`)."""
        return self.serials.get(name, item.serial)

    unfetched: int = 0  # fetching stopped before these (circuit breaker, signal)
    unfetched_names: set[str] = field(default_factory=set)  # ... when they are kept pending

    def lists(self, name: str, if_failed: bool = True) -> bool:
        """Whether `name` belongs in the root index; `if_failed` when its fetch failed."""
        if name in self.failed or name in self.unfetched_names:
            return if_failed
        return name not in self.unlisted


@dataclass(slots=True)
class ProjectPages:
    """A project's page in each mirrored form as fetched, and as the mirror held it before."""

    pages: list[FetchedPage]
    olds: list[bytes | None]


@dataclass(slots=True)
class ProjectFetch:
    """One project's fetch in every form as it stands between requests (`Sync.fetch_current`).

    The page loop (`fetch_loop`) makes a project's first round of requests
    and hands a fetch that needs a retry to a worker thread, which goes on
    from `failure` as if it had made that request itself: `todo` not empty,
    a request failed (its form's retries go on); empty, the round's answers
    did not agree (the next round, of the forms `behind`, follows).
    """

    name: str
    item: PendingProject
    olds: list[bytes | None]  # the pages on disk, per form
    pages: list[FetchedPage | None]  # the newest answer per form
    todo: list[int]  # the forms this round still asks for (the first: every form)
    expected: int  # the serial they must reach
    behind: tuple[int, ...] = ()  # the forms the next round asks for
    failure: Retryable | None = None  # the loop's last attempt failed so


@dataclass(slots=True)
class Fetched:
    """What a worker made of one project (see `Sync.fetch_and_compare`)."""

    name: str
    item: PendingProject
    # None: new pages the worker wrote itself (`listed` and `serial` say what they showed)
    pages: ProjectPages | UpstreamError | NotFetched | None
    listed: bool = False
    serial: int = 0


def portable_fetched(fetched: Fetched) -> Fetched:
    """`fetched` as it can cross a pipe: an error becomes a plain UpstreamError (its line)."""
    if isinstance(fetched.pages, UpstreamError) and type(fetched.pages) is not UpstreamError:
        return dataclasses.replace(fetched, pages=UpstreamError(str(fetched.pages)))
    return fetched


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
        summary: Summary | None = None,
        halt: Halt | None = None,
    ) -> None:
        self.config = config
        self.layout = MirrorLayout(config.mirror_dir)
        self.upstream = canonical_url(config.pypi_url)
        self.pypi = pypi
        self.rstuf = rstuf
        self.progress = progress
        self.out = out
        self.summary = summary or Summary()
        self.summary.dry_run = config.dry_run
        self.state = State()
        self.loaded = False  # self.state is the state file's
        self.identified = False  # ... and was found to belong to this mirror and upstream
        self.writer = MirrorWriter(self.layout, self.state)
        self.forms = SIMPLE_FORMATS[config.simple_format]
        self.filter = config.project_filter
        self.source = JSON_ROOT_SOURCE if config.no_xmlrpc else XMLRPC_SOURCE
        self.source_noted = False
        self.membership_changed = False
        self.bootstrap_refusal: str | None = None  # why this run keeps changes from RSTUF
        self.budget = WaitBudget(config.rstuf_wait)  # one for the whole run
        self.delivery: RstufDelivery | None = None
        self.pages_changed = False
        self.marker_owed = False  # write the marker before the next state save
        self.upstream_changed = False
        self.applying = False  # inside a section a signal must not cut: do not save then
        self.breaker = CircuitBreaker(config.failure_limit)
        self.halt = halt or Halt()  # the PypiClient's retry pauses should wait on it too
        self.untracked = 0  # pages a full sync still owes that state.pending does not list
        self.status = StatusRecorder(
            self.layout.status_file, self.layout.staging_dir, config.metrics_file
        )
        self.started = time.monotonic()
        self.revalidating = False  # page GETs are conditional on the held bytes (revalidate)
        self.revalidate_limit: int | None = None  # pages one revalidation checks at most

    # the run

    def run(self) -> int:
        """Run once; raises ToolError (a refusal or failure) or Stopped (a signal)."""
        self.started = time.monotonic()
        self.summary.started = True
        try:
            return self.sync()
        except Stopped as stop:
            if stop.note:  # stopped under the lock: what was saved is said already
                raise
            raise Stopped(stop.signum, self.save_after_stop()) from None
        finally:
            self.settle_summary()

    def sync(self) -> int:
        config = self.config
        refuse_legacy_default_state(config.state_file, given=config.state_path is not None)
        if not config.dry_run and not self.layout.root.exists():
            self.check_identity()  # before the lock, which would create the directory
        with mirror_lock(self.layout.lock_path, read_only=config.dry_run), self.recording():
            try:
                self.sync_locked()
            except Stopped as stop:  # saved inside the lock, and recorded with what was saved
                raise Stopped(stop.signum, self.save_after_stop()) from None
        for problem in dict.fromkeys(self.summary.problems):  # each once, in order
            log.warning("%s", problem)
        return self.exit_code()

    def sync_locked(self) -> None:
        self.catch_up(self.start())  # None: following the JSON root

    def catch_up(
        self, last_serial: int | None, wait: bool = True, revalidating: bool = True
    ) -> None:
        """Under the lock, identity checked: apply what changed up to PyPI's `last_serial`,
        revalidate a share of the pages (unless not `revalidating`), and deliver to RSTUF,
        following its tasks within the budget if `wait` (a --watch cycle does not wait)."""
        config = self.config
        self.forget_rstuf_if_disabled()
        if self.state.outbox.dirty and not config.dry_run:
            # a killed run may have left pages unflushed: never register bytes
            # that a power cut could still take back
            sync_filesystem(self.layout.root)
        self.deliver_outbox(wait=False)  # old tasks get their publish while we update
        for name in [n for n in self.state.pending if not self.filter.allows(n)]:
            del self.state.pending[name]  # excluded now: never fetched again
        if self.needs_full_sync():
            self.full_sync(last_serial)
            cursor = self.state.revalidation  # every page was just checked
            self.state.revalidation = dataclasses.replace(cursor, at=time.time())
        else:
            self.update(last_serial)
            if revalidating:
                self.revalidate(self.revalidate_limit)
        self.state.filters = self.filter
        if config.dry_run:
            return
        sync_filesystem(self.layout.root)  # every page durable before the serial moves
        self.save("run-end")
        self.deliver_outbox(wait=wait)
        # after the delivery: what RSTUF just confirmed frees the copies it replaced
        self.writer.collect_retired(self.config.grace)
        self.save()

    def exit_code(self) -> int:
        if self.config.dry_run:
            return EXIT_OK
        return EXIT_PARTIAL if self.summary.problems or self.pending_count() else EXIT_OK

    def start(self) -> int | None:
        """Under the lock: clear leftovers, check state and mirror; return PyPI's last serial.

        Every refusal comes before anything is written (but status.json, which records it).
        """
        config = self.config
        if not config.dry_run:
            clear_staging(self.layout.staging_dir)
            clear_state_temps(config.state_file)
        verdict, facts = self.check_identity()
        last_serial = self.xmlrpc_last_serial()
        if last_serial is not None and not verdict.upstream_changed:
            check_serial(self.state.serial, last_serial, self.upstream, config.state_file)
        self.record_identity(verdict, facts)
        return last_serial

    def xmlrpc_last_serial(self) -> int | None:
        """PyPI's ``changelog_last_serial``; None when the mirror follows the JSON root."""
        if self.source != XMLRPC_SOURCE:
            return None
        try:
            return self.upstream_last_serial()
        except XmlRpcUnavailable as exc:
            self.fall_back(exc)
            return None

    def check_identity(self) -> tuple[Verdict, MirrorFacts]:
        """Read the state and the mirror; refuse (MirrorMismatch) if they do not belong together."""
        self.state = load_state(self.config.state_file)
        self.writer = MirrorWriter(self.layout, self.state)
        self.loaded = True
        self.summary.serial_before = self.state.serial
        facts = read_mirror_facts(self.layout)
        verdict = check_identity(
            self.state,
            facts,
            self.upstream,
            self.config.full_check,
            self.config.state_file,
            new_mirror_id(),
        )
        return verdict, facts

    def record_identity(self, verdict: Verdict, facts: MirrorFacts) -> None:
        """Take the verdict's identity into the state; the next save makes it durable."""
        for note in verdict.notes:
            log.info("%s", note)
        for warning in verdict.warnings:
            log.warning("%s", warning)
        state = self.state
        if state.read_schema == 1 and state.serial is None and state.full_sync_in_progress:
            # release 1.0 wrote the root index only at the end of a first sync
            state.first_sync = not facts.root_index
        state.mirror_id, state.mirror_dir = verdict.mirror_id, str(facts.directory)
        state.upstream = self.upstream
        self.marker_owed = verdict.write_marker
        self.upstream_changed = verdict.upstream_changed
        self.identified = True

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
            self.settle_summary()
            self.summary.exit = exit_code
            # a --watch cycle after the first records the state it was identified with
            loaded = self.state if self.state is not unread or self.identified else None
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

    def pending_count(self) -> int:
        return len(self.state.pending) + self.untracked

    def save(self, why: str = "") -> None:
        """Write state.json (not in a dry run); `why` names the moment for the crash tests.

        The marker goes first, so a state never names an id its mirror lacks.
        """
        if self.config.dry_run:
            return
        if self.marker_owed:
            write_marker(self.layout, self.state.mirror_id or "")
            self.marker_owed = False
        crash_point("state-save", (why,))
        save_state(self.config.state_file, self.state)

    def save_after_stop(self) -> str:
        """Save what is durable after a signal; return what the stop line adds."""
        if not self.identified:
            return "nothing was changed"
        if self.config.dry_run:
            return "nothing was changed (dry run)"
        if self.applying:  # a second signal cut a batch: the last saved state is consistent
            return "the state saved last stays; the next run resumes from it"
        try:
            if self.layout.root.exists():
                sync_filesystem(self.layout.root)
            self.save("stopped")
        except OSError as exc:
            return f"the state could not be saved ({exc}); the next run resumes from the last one"
        return (
            f"state saved at serial {self.state.serial} with {self.pending_count()} "
            "project(s) pending; the next run resumes"
        )

    def settle_summary(self) -> None:
        summary = self.summary
        summary.requests = self.pypi.requests_made
        summary.rstuf_waited = self.budget.spent
        summary.elapsed = time.monotonic() - self.started
        if self.loaded:
            summary.serial_after = self.state.serial
            summary.pending = self.pending_count()
            summary.outbox = len(self.state.outbox)

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

    def fetch_listing(self, last_serial: int | None = None) -> tuple[Listing, int]:
        """Every project PyPI lists (filtered) with its serial, and PyPI's serial then.

        Through XML-RPC the serial is taken before the listing (`last_serial`,
        when this run asked for it already); the JSON root carries its own
        (``X-PyPI-Last-Serial``, as cached by the CDN with it).
        """
        allows = None if self.filter.everything else self.filter.allows
        if self.source == XMLRPC_SOURCE:
            wanted = Listing(self.spill_dir())
            try:
                if last_serial is None:
                    last_serial = self.upstream_last_serial()
                self.pypi.list_packages_with_serial(
                    functools.partial(add_listed, wanted, allows=allows)
                )
                self.note_source()
                return wanted, last_serial
            except XmlRpcUnavailable as exc:
                self.fall_back(exc)
        wanted = Listing(self.spill_dir())
        last_serial = self.pypi.list_projects_json(
            functools.partial(add_listed, wanted, allows=allows)
        )
        self.summary.upstream_serial, self.summary.upstream_seen = last_serial, time.time()
        self.note_source()
        return wanted, last_serial

    def spill_dir(self) -> Path | None:
        """Where a listing's sorted runs go while it streams in (a dry run: in memory)."""
        if self.config.dry_run:
            return None
        self.layout.staging_dir.mkdir(parents=True, exist_ok=True)
        return self.layout.staging_dir

    # first sync and --full-check

    def full_sync(self, last_serial: int | None) -> None:
        """Compare PyPI's whole listing with the mirror and fix every difference.

        The target serial is taken before the listing and lowered to the
        listing's newest serial (PyPI caches the listing for up to an hour), so
        the next update replays anything the listing did not show yet. A first
        sync records nothing for RSTUF: RSTUF is bootstrapped from the CSV.
        Projects the filter excludes are removed without a fetch, and pages in
        forms no longer mirrored are removed. It is finished only when every
        listed page is on disk or known gone: until then the state has no
        serial and the next run goes on with it.
        """
        wanted, last_serial = self.fetch_listing(last_serial)
        target = min(last_serial, wanted.max_serial(default=last_serial))
        if not self.state.full_sync_in_progress:
            self.state.first_sync = self.state.serial is None and not (
                self.layout.root_page.exists() or has_project_pages(self.layout)
            )
            self.state.full_sync_in_progress = True
            self.save("full-sync-started")
        first = self.state.first_sync
        kind = "first sync" if first else "full check"
        log.info("%s: %d projects listed at serial %d", kind, len(wanted), target)
        excluded: set[str] = set()  # on disk, and the filter excludes them now
        serials: dict[str, int] = {}  # page serials newer than the listing's, for the JSON root
        # --full-check: archiving leaves the serial as it was, so every listed page is fetched
        on_disk = (
            None if self.config.full_check else functools.partial(self.on_disk_serial, serials)
        )
        to_fetch = full_sync_fetches(
            wanted, self.allowed_local(excluded), on_disk, self.state.pending
        )
        if self.config.dry_run:
            self.summary.would_fetch = len(to_fetch)
            outbox = dry_run.outbox_actions(self.owed_for_plan(), self.target_exists)
            plan = dry_run.full_sync_plan(
                kind.replace(" ", "-"), len(to_fetch), len(wanted), target, outbox
            )
            for line in plan:
                self.out(line)
            return
        self.summary.unchanged += to_fetch.excluded
        with self.applying_changes():
            outcome = self.refresh(
                to_fetch,
                record_changes=not first,
                keep_unfetched=False,
                nothing_on_disk=to_fetch.local_seen == 0 and not excluded,
            )
            self.remove_projects(excluded, record_changes=not first)
            self.drop_other_forms(record_changes=not first)
            self.finish_full_sync(wanted, outcome, target, first, serials)

    def allowed_local(self, excluded: set[str] | None = None) -> Iterator[str]:
        """The projects on disk the filter allows, streamed; those it excludes go to `excluded`."""
        for name in self.writer.local_projects():
            if self.filter.allows(name):
                yield name
            elif excluded is not None:
                excluded.add(name)

    def finish_full_sync(
        self,
        wanted: Listing,
        outcome: Refreshed,
        target: int,
        first: bool,
        serials: dict[str, int],
    ) -> None:
        """Write the root indexes from what is on disk; move the serial if the sync is done.

        Who is listed is decided per project from what this run learned, and
        from the disk only for the few it did not fetch: no set of the mirror's
        700,000 names.
        """
        done = not outcome.unfetched and not (first and outcome.failed)
        serials.update(outcome.serials)
        for name in outcome.failed:  # listed with the serial of the page still served
            if self.writer.has_page(name):
                serials[name] = self.writer.local_serial(name, self.forms[0].basename) or 0
        has_page = self.writer.has_page
        if outcome.unfetched:  # stopped early: the pages on disk now say who is listed

            def listed(name: str) -> bool:
                return name not in outcome.unlisted and has_page(name)
        else:
            unsure = outcome.failed | outcome.unfetched_names

            def listed(name: str) -> bool:
                return outcome.lists(name, if_failed=name in unsure and has_page(name))

        if done or has_project_pages(self.layout):  # never an empty root for a failed sync
            self.write_roots(
                lambda: (
                    (name, item.display_name, serials.get(name, item.serial))
                    for name, item in wanted.items()
                    if listed(name)
                ),
                record_change=not first,
            )
        if not done:
            still = self.pending_count()
            what = "first sync" if first else "full check"
            self.summary.problems.append(
                f"the {what} is not finished: {still} project(s) still to fetch; "
                "the next run goes on with it"
            )
            return
        serial = self.state.serial
        self.state.serial = (
            target if serial is None or self.upstream_changed else max(serial, target)
        )
        self.state.formats = self.form_words
        self.state.full_sync_in_progress = False
        self.state.first_sync = False

    def target_exists(self, target: str) -> bool:
        return self.layout.path_of_target(target).exists()

    def on_disk_serial(
        self, serials: dict[str, int], name: str, listed: PendingProject
    ) -> int | None:
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
        if serial > listed.serial:
            serials[name] = serial
        return serial

    def drop_other_forms(self, record_changes: bool) -> None:
        """Remove the pages and root of forms no longer mirrored (after a --simple-format change).

        Only when the state says such pages were made, or on --full-check
        (which also clears strays): otherwise the mirror cannot hold any. The
        mirror's directories are streamed once more, not kept from before.
        """
        dropped = [form for form in ALL_FORMATS if form not in self.forms]
        if not dropped or not (
            set(self.state.formats) - set(self.form_words) or self.config.full_check
        ):
            return
        batch: list[list[Change]] = []
        for name in self.allowed_local():
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

    def update(self, last_serial: int | None) -> None:
        """Apply what changed since ``state.serial``: from the changelog, or the JSON root.

        `last_serial` is PyPI's ``changelog_last_serial`` (None: XML-RPC is not used).
        """
        widened_from = self.apply_filter_change()
        if self.source == XMLRPC_SOURCE and last_serial is not None:
            try:
                self.update_from_changelog(widened_from, last_serial)
                return
            except XmlRpcUnavailable as exc:  # raised before anything was fetched
                self.fall_back(exc)
        self.update_from_listing(widened_from)

    def update_from_changelog(self, widened_from: ProjectFilter | None, last_serial: int) -> None:
        """Apply the changelog since ``state.serial``: fetch each mentioned project once."""
        since = self.state.serial
        assert since is not None
        self.note_source()
        to_fetch: dict[str, PendingProject] = {}
        newest = since
        identity_changed: set[str] = set()  # renamed, created or removed: see identity_changes
        membership_hint = False  # for a dry run: the root index may change
        for entries in self.pypi.changelog_since(since, last_serial):
            for name, item in projects_to_refresh(entries).items():
                if self.filter.allows(name):
                    merge_pending(to_fetch, name, item)
            identity_changed |= identity_changes(entries)
            membership_hint |= any("quarantine" in entry.action for entry in entries)
            newest = entries[-1].serial
        if widened_from is not None:  # the filter admits more now: fetch just those
            listing, _ = self.fetch_listing()
            for name in listing:
                if not widened_from.allows(name):
                    merge_pending(to_fetch, name, listing[name])
        for name, item in self.state.pending.items():
            merge_pending(to_fetch, name, item)
        quiet = self.config.watch and not to_fetch  # a --watch cycle with nothing new
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "changelog %d->%d: %d projects to refresh",
            since,
            newest,
            len(to_fetch),
        )
        if self.config.dry_run:
            root = bool(identity_changed) or membership_hint
            self.plan_update(since, newest, to_fetch, root)
            return
        with self.applying_changes():
            outcome = self.refresh(to_fetch, record_changes=True, keep_unfetched=True)
            self.finish_update(to_fetch, outcome, identity_changed)
            self.state.serial = newest  # what was not fetched is pending with its serial

    def plan_update(
        self, since: int, newest: int, to_fetch: Mapping[str, PendingProject], root: bool
    ) -> None:
        """A dry run's update: print what would be fetched and sent, fetching no page."""
        self.summary.would_fetch = len(to_fetch)
        outbox = dry_run.outbox_actions(self.owed_for_plan(), self.target_exists)
        root = root or self.state.root_stale
        for line in dry_run.update_plan(since, newest, to_fetch, outbox, root):
            self.out(line)

    @contextlib.contextmanager
    def applying_changes(self) -> Iterator[None]:
        """Fetching and writing, up to the serial's move: a signal winds it down, never cuts it.

        A first SIGINT/SIGTERM stops the fetching at once (like the circuit
        breaker: the rest stays pending); the pages fetched are written, the
        root index and the serial follow, and only then is `Stopped` raised,
        at a point where the state in memory is consistent and is saved.
        """
        with deferred_stops():
            self.applying = True
            yield
            self.applying = False

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
        for name, item in listing.items():
            if item.serial > since or (widened_from is not None and not widened_from.allows(name)):
                to_fetch[name] = item
        renamed: set[str] = set()  # removed and created again under another spelling
        unlisted: dict[str, str] = {}
        for name, display, listed in self.root_members_in(listing):
            if listed is None:
                unlisted[name] = display
            elif listed.display_name != display:
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
        if self.config.dry_run:
            self.plan_update(since, root_serial, to_fetch, bool(renamed or unlisted))
            return
        with self.applying_changes():
            outcome = self.refresh(to_fetch, record_changes=True, keep_unfetched=True)
            self.finish_update(to_fetch, outcome, renamed)
            self.state.serial = max(since, root_serial)  # what was not fetched is pending

    def root_members_in(self, listing: Listing) -> Iterator[tuple[str, str, PendingProject | None]]:
        """(normalized, display, the listing's entry or None) of every project the root lists.

        Both are sorted by normalized name: one walk through each, not a
        lookup per project (700,000 of them); a member out of order (a root
        damaged by hand) is looked up.
        """
        entries = iter(listing.items())
        entry = next(entries, None)
        previous = ""
        for name, display in self.iter_root_members():
            if name < previous:
                yield name, display, listing.get(name)
                continue
            previous = name
            while entry is not None and entry[0] < name:
                entry = next(entries, None)
            yield name, display, entry[1] if entry is not None and entry[0] == name else None

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
        fetched = to_fetch.keys() - outcome.failed - outcome.unfetched_names
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
        assert temp is not None
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

    def refresh(
        self,
        wanted: Mapping[str, PendingProject],
        record_changes: bool,
        keep_unfetched: bool = True,
        nothing_on_disk: bool = False,
    ) -> Refreshed:
        """Fetch every project in `wanted` once, in every form, and apply what its pages say.

        Returns which projects failed, which were fetched but do not belong
        in the root index (gone, or quarantined), and the page serials that
        differ from `wanted`'s: all small, where a flag per project would be
        700,000 entries. Failures stay in ``state.pending``, and so, with
        `keep_unfetched` (an update), do the projects that fetching stopped
        before (circuit breaker, signal); a full sync finds those again from the
        listing. With `record_changes`, each batch of changed paths is saved to
        the outbox before the batch touches the disk, so RSTUF hears of every
        write even if the run dies right after it. `nothing_on_disk`: the
        mirror has no page of any project in `wanted`, so none is read back.
        """
        outcome = Refreshed()
        if not wanted:  # a quiet --watch cycle: no worker threads started for nothing
            return outcome
        settled: set[str] = set()  # pending projects fetched now
        work = functools.partial(
            self.fetch_and_compare, record_changes=record_changes, read_old=not nothing_on_disk
        )
        fetches = self.fetch_all(work, wanted, helped=not record_changes and nothing_on_disk)
        self.progress.start(len(wanted), "fetching")  # after a fork: its thread is ours alone
        batch: list[list[Change]] = []
        try:
            for fetched in fetches:
                name, item, result = fetched.name, fetched.item, fetched.pages
                self.progress.advance(failed=isinstance(result, Exception))
                if isinstance(result, NotFetched):
                    self.not_fetched(name, item, outcome, keep_unfetched)
                    continue
                if isinstance(result, Exception):
                    self.keep_pending(name, item, result)
                    outcome.failed.add(name)
                    continue
                if name in self.state.pending:
                    settled.add(name)
                if result is None:  # new pages, written by the worker that fetched them
                    self.written_by_worker(fetched, outcome)
                    continue
                changes = [
                    Change(name, item.display_name, page, old, form.basename)
                    for form, page, old in zip(self.forms, result.pages, result.olds, strict=True)
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
        finally:
            fetches.close()  # on an error too: stop the workers, drop what is queued
        self.apply_batch(batch, record_changes)
        self.progress.finish()
        for name in settled:  # only now: an intent save must keep them
            self.state.pending.pop(name, None)
        if self.halt.reason is not None:
            self.summary.problems.append(
                f"{self.halt.reason}: stopped fetching; {outcome.unfetched} project(s) not "
                "fetched are kept for the next run"
            )
        return outcome

    def written_by_worker(self, fetched: Fetched, outcome: Refreshed) -> None:
        """Count new pages a worker wrote, as `apply_batch` would have (nothing to retire)."""
        if not fetched.listed:
            outcome.unlisted.add(fetched.name)
        elif fetched.serial != fetched.item.serial:
            outcome.serials[fetched.name] = fetched.serial
        self.membership_changed |= fetched.listed
        self.pages_changed = True
        self.summary.added += 1

    def not_fetched(
        self, name: str, item: PendingProject, outcome: Refreshed, keep_pending: bool
    ) -> None:
        outcome.unfetched += 1
        if keep_pending:
            outcome.unfetched_names.add(name)
            merge_pending(self.state.pending, name, item)
        elif name not in self.state.pending:  # a full sync finds it again in the listing
            self.untracked += 1

    def fetch_all(
        self,
        work: Callable[[tuple[str, PendingProject]], Fetched],
        wanted: Mapping[str, PendingProject],
        helped: bool,
    ) -> Iterator[Fetched]:
        """`work` over every project of `wanted` on the worker threads, as each finishes.

        Once the halt is set (circuit breaker, or a signal seen at the next
        poll) no more pages are requested: every project left comes back
        NOT_FETCHED at once (`fetch_and_compare` sees the halt), running ones
        end after their current request. Closing the generator early halts
        and stops the workers the same way. `helped` (a first sync into an
        empty mirror: every page is written by the worker that fetched it):
        one thread per process makes the requests (`fetch_loop`, this Sync's
        `begin`, `step` and `go_on`), and with ``--processes 2`` on two cores
        a helper process takes every other project (`fetch_helper`), forked
        now, before any thread of this run starts: this is no generator, so
        that happens when it is called.
        """
        window = self.config.workers * 4
        items = iter(wanted.items())  # in `wanted`'s order, no lookup per project
        workers = self.config.workers
        results: Iterator[Fetched]
        split = None
        engine = FetchLoop(self, self.pypi.page_loop) if helped else None
        if helped and self.can_fork(len(wanted)):
            self.breaker = self.breaker.shared()  # one for both processes
            split = fetch_helper.HelperSplit(
                work,
                items,
                workers,
                window,
                portable=portable_fetched,
                on_fork=self.pypi.forget_connections,
                report_requests=lambda: self.pypi.requests_made,
                poll=self.poll_stop,
                halted=lambda: self.halt.is_set,
                halt_helper=lambda: self.halt.set("the run stopped fetching"),
                engine=engine,
            )
            log.debug("helper process %d fetches its share of the pages", split.pid)
            results = iter(split)
        else:
            results = map_unordered(
                work, items, workers, window, poll=self.poll_stop, engine=engine
            )
        return self.halting_at_close(results, split)

    def halting_at_close(
        self, results: Iterator[Fetched], split: fetch_helper.HelperSplit | None
    ) -> Iterator[Fetched]:
        """`results`, halting the fetch if the consumer closes this early (see `fetch_all`)."""
        finished = False
        try:
            # not `yield from`: closed early, the halt must be set before the workers are
            # joined (their retry pauses end on it)
            for fetched in results:  # noqa: UP028
                yield fetched
            finished = True
        finally:
            if not finished:  # closed early: an error or a second signal in the consumer
                self.halt.set("the run is ending")
            results.close()  # type: ignore[attr-defined]
            if split is not None:
                self.pypi.requests_made += split.helper_requests

    def can_fork(self, projects: int) -> bool:
        """Whether a helper process may take half of this first sync (see `fetch_all`)."""
        return (
            self.config.processes > 1
            and self.config.workers > 1
            and not self.config.dry_run
            and (os.cpu_count() or 1) > 1
            and fetch_helper.available()
            and threading.active_count() == 1
            and projects >= 4 * self.config.workers
        )

    def poll_stop(self) -> None:
        """In the consuming thread, every few hundredths of a second: a signal halts fetching."""
        signum = stop_requested()
        if signum is not None:
            self.halt.set(f"stopped by {signal.Signals(signum).name}")

    def fetch_and_compare(
        self, pair: tuple[str, PendingProject], record_changes: bool, read_old: bool = True
    ) -> Fetched:
        """On a worker thread: fetch one project's pages, and write them if that is safe here.

        Safe here, without the main thread's batch, are new pages (nothing on
        disk in any form) when no change is recorded (a first sync): see
        `settle_pages`. Once the halt is set, nothing is fetched.
        """
        name, item = pair
        if self.halt.is_set:
            return Fetched(name, item, NOT_FETCHED)
        return self.go_on(self.begin_fetch(name, item, read_old), record_changes)

    def begin_fetch(self, name: str, item: PendingProject, read_old: bool) -> ProjectFetch:
        """A fetch of `name`'s pages in every form, nothing asked yet.

        Unless not `read_old` (there are none), the worker reads the pages on
        disk now: the main thread, which writes, then compares bytes without
        waiting on I/O, and a page identical to the mirror's is not parsed again.
        """
        olds = [
            self.writer.read_page(name, form.basename) if read_old else None for form in self.forms
        ]
        every_form = list(range(len(self.forms)))
        return ProjectFetch(name, item, olds, [None] * len(self.forms), every_form, item.serial)

    def go_on(self, fetch: ProjectFetch, record_changes: bool = False) -> Fetched:
        """Fetch what `fetch` still lacks (all of it, if nothing was asked), then `settle_pages`."""
        try:
            pages = self.fetch_current(fetch)
        except FetchHalted:
            return Fetched(fetch.name, fetch.item, NOT_FETCHED)
        except UpstreamError as exc:
            return Fetched(fetch.name, fetch.item, exc)
        return self.settle_pages(fetch.name, fetch.item, pages, record_changes)

    def settle_pages(
        self, name: str, item: PendingProject, pages: ProjectPages, record_changes: bool
    ) -> Fetched:
        """A project's fetched pages as a result, written first if that is safe on this thread.

        Safe are new pages (nothing on disk in any form) when no change is
        recorded (a first sync): `apply_batch` would neither save an intent nor
        retire a copy for them. Everything else goes through the batch. Only
        this run's one worker for `name` touches its directory, and a page is
        written the same way wherever that happens.
        """
        direct = not record_changes and not self.config.dry_run
        direct = direct and all(page.body is not None for page in pages.pages)
        if not (direct and all(old is None for old in pages.olds)):
            return Fetched(name, item, pages)
        for form, page in zip(self.forms, pages.pages, strict=True):
            assert page.body is not None
            self.writer.store_new(name, page.body, form.basename)
        primary = pages.pages[0]
        assert primary.facts is not None
        return Fetched(name, item, None, primary.facts.listed, primary.serial or 0)  # bodies freed

    def fetch_current(self, fetch: ProjectFetch) -> ProjectPages:
        """A project's page in every form, all from one moment and none older than needed.

        Retries while PyPI's CDN serves a page older than the changelog (a
        lower ``X-PyPI-Last-Serial``, or a 404 for a project the changelog's
        newest entry says exists) or while the forms disagree (see
        `sync_plan.forms_answer`); each retry fetches only the forms behind.
        A `fetch` the page loop began goes on from its failure (`ProjectFetch`).
        Raises StalePage or MissingPage, or FetchHalted once the halt is set.
        Every attempt feeds the circuit breaker.
        """
        name = fetch.name
        failed, fetch.failure = fetch.failure, None
        # a request's failure: its form's retries go on; a round's: the round's do
        inner = failed if fetch.todo else None
        outer = None if fetch.todo else failed

        def attempt() -> ProjectPages:
            nonlocal inner
            if not fetch.todo:  # a round after one whose answers did not agree
                fetch.todo = list(fetch.behind)
            while fetch.todo:
                index = fetch.todo[0]
                request = functools.partial(self.attempt, index, name, fetch.olds[index])
                first_failure, inner = inner, None
                fetch.pages[index] = self.pypi.with_retries(name, request, first_failure)
                fetch.todo.pop(0)
            return self.end_round(fetch)

        # the retry pauses go through the halt's sleep: they end when the run stops fetching
        return call_with_retries(attempt, self.pypi.retry_policy, name, log, logging.DEBUG, outer)

    def end_round(self, fetch: ProjectFetch) -> ProjectPages:
        """The pages, when a round's answers show the project at one moment and new enough;
        otherwise `fetch` says which forms are behind, and the reason is raised."""
        got = [page for page in fetch.pages if page is not None]
        item = fetch.item
        answer = forms_answer(
            got, PendingProject(item.display_name, fetch.expected, item.expect_page)
        )
        if answer.problem is None:
            self.breaker.record(True)
            return ProjectPages(got, fetch.olds)
        fetch.behind, fetch.expected = answer.behind, answer.expected
        self.count_failure(str(answer.problem))
        raise answer.problem

    def attempt(self, index: int, name: str, known: bytes | None) -> FetchedPage:
        """One request for a page in form `index` unless the halt is set (conditional on
        the held bytes when revalidating)."""
        self.halt.check()
        json_form = self.forms[index] is JSON
        unless = known if self.revalidating else None
        return self.judge(index, name, self.pypi.get_page(name, json_form, unless), known)

    def judge(
        self, index: int, name: str, outcome: PageAnswer | PageTransportError, known: bytes | None
    ) -> FetchedPage:
        """What one request for the page in form `index` brought; failures feed the breaker."""
        try:
            return self.pypi.read_page(name, outcome, known, self.forms[index] is JSON)
        except UpstreamError as exc:
            self.count_failure(str(exc))
            raise

    # the page loop's side of a fetch (fetch_loop.ProjectSteps)

    def begin(self, pair: tuple[str, PendingProject]) -> ProjectFetch:
        return self.begin_fetch(*pair, read_old=False)

    def step(
        self, fetch: ProjectFetch, outcome: PageAnswer | PageTransportError | None
    ) -> tuple[str, str] | Fetched | None:
        """The page loop's first round of `fetch` (a clean first sync: nothing on disk, no
        change recorded), judged as `fetch_current`'s first attempt would judge it."""
        if outcome is not None:
            try:
                fetch.pages[fetch.todo[0]] = self.judge(fetch.todo[0], fetch.name, outcome, None)
            except Transient as exc:
                fetch.failure = exc  # its retries go on in `go_on`
                return None
            except UpstreamError as exc:
                return Fetched(fetch.name, fetch.item, exc)
            fetch.todo.pop(0)
        if fetch.todo:
            try:
                self.halt.check()
            except FetchHalted:
                return Fetched(fetch.name, fetch.item, NOT_FETCHED)
            self.pypi.count_request()
            return page_request(fetch.name, self.forms[fetch.todo[0]] is JSON)
        try:
            pages = self.end_round(fetch)
        except (StalePage, MissingPage) as exc:
            fetch.failure = exc  # the next round goes on in `go_on`
            return None
        return self.settle_pages(fetch.name, fetch.item, pages, record_changes=False)

    def count_failure(self, what: str) -> None:
        # tripped already: by the helper process, which shares the breaker (fetch_all)
        if self.breaker.record(False) or (self.breaker.tripped and not self.halt.is_set):
            self.halt.set(
                f"PyPI is failing as a whole: {self.breaker.limit} page requests failed in "
                f"a row (the last: {what}; --failure-limit)"
            )

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
                {project_target(c.name, c.basename): c.old and hexdigest_of(c.old) for c in changes}
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

    # revalidation (--revalidate-period): pages PyPI changed without a changelog entry

    def revalidate(self, limit: int | None = None) -> None:
        """Fetch again, conditionally, the share of the mirror's projects the period asks for
        now (`revalidate.plan`), after the cursor; `limit` caps how many.

        A changed page goes through `refresh` as an update's does: written in
        every form, its hash-prefixed copy made, owed to RSTUF. One that fails
        stays pending (fetched in full next run). The slice comes from the root
        index, streamed in sorted order: quarantined projects, which it does not
        list, change only with a changelog entry anyway.
        """
        period, cursor = self.config.revalidate_period, self.state.revalidation
        if period <= 0 or self.config.dry_run or self.halt.is_set:
            return
        total = cursor.total or sum(1 for _ in self.iter_root_members())
        planned = revalidate.plan(cursor, total, time.time(), period, limit)
        if planned.count == 0:
            self.state.revalidation = planned.cursor
            return
        chosen, total = revalidate.next_slice(self.iter_root_members(), cursor.after, planned.count)
        primary = self.forms[0].basename
        wanted = {
            name: PendingProject(display, self.writer.local_serial(name, primary) or 0)
            for name, display in chosen
        }
        checked = (self.pypi.not_modified, self.summary.updated, self.summary.removed)
        self.revalidating = True
        try:
            with self.applying_changes():
                outcome = self.refresh(wanted, record_changes=True, keep_unfetched=False)
                self.finish_update(wanted, outcome, set())
                if not self.halt.is_set:
                    done = revalidate.cursor_after(chosen, planned.cursor)
                    self.state.revalidation = dataclasses.replace(done, total=total)
        finally:
            self.revalidating = False
        log.info(
            "revalidated %d of %d projects (through %s): %d pages unchanged (304), "
            "%d projects changed, %d gone",
            len(wanted),
            total,
            chosen[-1][0],
            self.pypi.not_modified - checked[0],
            self.summary.updated - checked[1],
            self.summary.removed - checked[2],
        )

    # RSTUF

    @property
    def owes_rstuf(self) -> bool:
        """Whether changes are kept for RSTUF (everything but --no-rstuf)."""
        return not self.config.no_rstuf

    def owed_for_plan(self) -> set[str]:
        """What a dry run lists as sent to RSTUF: nothing under --no-rstuf."""
        return self.state.outbox.dirty if self.owes_rstuf else set()

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
        if not self.owes_rstuf or self.config.dry_run:
            return  # a dry run lists the outbox with its plan
        if not (box.dirty or box.tasks or box.publishes or box.uncertain):
            return
        if self.rstuf is None:
            if wait:  # once, at the end of the run
                self.summary.problems.append(
                    f"{len(box)} change(s) wait in the outbox for RSTUF: set --rstuf-url "
                    "(or RSTUF_API_URL), or --no-rstuf to run without RSTUF"
                )
            return
        if not self.bootstrap_imported():
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

    def bootstrap_imported(self) -> bool:
        """Whether RSTUF holds the bootstrap import, checked once before the first delivery.

        An update delivered before the operator imported the bootstrap CSV makes
        that import abort on a duplicate path (or, with another importer, lets
        older rows overwrite newer ones). With a TUF metadata URL configured,
        the first delivery after a first sync therefore checks that RSTUF's
        verified metadata signs the root index (of the first mirrored form), the
        CSV's first row; until it does, changes stay in the outbox. Without a
        metadata URL nothing is checked (as before).
        """
        if self.state.bootstrap_seen or self.config.tuf_metadata_url is None:
            return True
        if self.bootstrap_refusal is None:
            waiting = f"{len(self.state.outbox)} change(s) stay in the outbox"
            root = self.forms[0].root_target  # the CSV's first row of this mirror's forms
            from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

            try:
                signed = tuf_audit.signed_target(audit_settings(self.config), root)
            except tuf_audit.AuditError as exc:
                self.bootstrap_refusal = (
                    f"cannot check that RSTUF holds the bootstrap import ({exc}); {waiting}"
                )
            else:
                if signed is not None:
                    self.state.bootstrap_seen = True
                    self.save("bootstrap-seen")
                    return True
                self.bootstrap_refusal = (
                    f"RSTUF's TUF metadata does not sign {root}: the bootstrap import "
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
        state.json, and the state is only read for the outbox note (a damaged
        one is no reason not to audit). A repair is a run like a sync: state
        and mirror must belong together, it is recorded in status.json and
        ends with the summary line. Raises tuf_audit.AuditError when the audit
        cannot run.
        """
        self.started = time.monotonic()
        served = self.layout.served_dir
        if not served.is_dir():
            raise ToolError(
                f"{served}: no served tree to audit (check --mirror-dir, or run pypi_mirror.py "
                "until its first sync finishes)"
            )
        if not self.config.repair:
            with mirror_lock(self.layout.lock_path):
                report = self.audit_tree()
            return EXIT_AUDIT_DIFFERS if report.differences else EXIT_OK
        config = self.config
        self.summary.started = True
        refuse_legacy_default_state(config.state_file, given=config.state_path is not None)
        try:
            with mirror_lock(self.layout.lock_path), self.recording():
                self.record_identity(*self.check_identity())
                differing: dict[str, tuf_audit.SignedTarget | None] = {}
                self.audit_tree(lambda d: differing.__setitem__(d.path, d.signed))
                if differing:
                    self.repair(differing)
        finally:
            self.settle_summary()
        for problem in self.summary.problems:
            log.warning("%s", problem)
        return self.exit_code()

    def audit_tree(
        self, also: Callable[[tuf_audit.Difference], None] | None = None
    ) -> tuf_audit.AuditReport:
        """Run the audit under the lock: print each difference (and pass it to `also`)."""
        if not self.loaded:
            try:
                self.state = load_state(self.config.state_file)
            except StateError as exc:
                log.warning("%s; auditing without it", exc)  # the audit is part of recovery
        owed = self.state.outbox.dirty | self.state.outbox.in_flight_paths()
        owed_found: set[str] = set()
        from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

        def emit(difference: tuf_audit.Difference) -> None:
            self.out(difference.line())
            if difference.path in owed:
                owed_found.add(difference.path)
            if also is not None:
                also(difference)

        report = tuf_audit.audit(audit_settings(self.config), self.layout, emit)
        self.out(report.line())
        if owed_found:
            log.info(
                "%d of the differing paths are changes the outbox still owes RSTUF; "
                "a run with RSTUF delivers them",
                len(owed_found),
            )
        return report

    def repair(self, differing: Mapping[str, tuf_audit.SignedTarget | None]) -> set[str]:
        """Fix each difference at its source, through the sync's own refresh path.

        Every differing project is re-fetched from PyPI in every mirrored form
        and written (the tree is never trusted over upstream, so a damaged page
        is replaced, not signed); its hash-prefixed copies are relinked; the
        roots take the changes as after an update, and a root that itself
        differs is rebuilt from PyPI's listing. Then each differing path whose
        final state RSTUF does not sign yet is queued in the outbox (an add, or
        a remove when the project or that form is gone) and delivered. A
        project the filter excludes is removed, not fetched. Returns the
        projects whose fetch failed: they stay pending, nothing of theirs is sent.
        """
        clear_staging(self.layout.staging_dir)
        clear_state_temps(self.config.state_file)
        roots = {form.root_target for form in ALL_FORMATS}
        projects: dict[str, list[str]] = {}
        for path in differing:
            name = project_of_target(path)
            if name is not None:
                projects.setdefault(name, []).append(path)
            elif path not in roots:
                log.warning("%s is not a page this mirror writes: remove it at RSTUF", path)
        excluded = {name for name in projects if not self.filter.allows(name)}
        log.info("repair: re-fetching %d project(s) from PyPI", len(projects) - len(excluded))
        # serial 0: any page PyPI serves now is current; a 404 means the project is gone
        wanted = {name: PendingProject(name, 0) for name in projects if name not in excluded}
        outcome = self.refresh(wanted, record_changes=True)
        self.remove_projects(excluded, record_changes=True)
        for name in sorted(outcome.failed):
            log.warning("repair: %s could not be fetched; nothing of it is sent to RSTUF", name)
        if roots & differing.keys():
            self.rebuild_roots(outcome)
        else:
            self.finish_update(self.displayed(wanted), outcome, renamed=set())
        in_flight = self.state.outbox.in_flight_paths()
        for path in differing:
            if project_of_target(path) not in outcome.failed:
                self.settle(path, differing[path], in_flight)
        sync_filesystem(self.layout.root)  # never register bytes a power cut could take back
        self.save("repaired")
        self.deliver_outbox(wait=True)
        return outcome.failed

    def displayed(self, wanted: dict[str, PendingProject]) -> dict[str, PendingProject]:
        """`wanted` with the display names the roots show (a repair does not rename)."""
        names = {}
        for name, display in self.iter_root_members():
            if name in wanted:
                names[name] = display
        return {
            name: PendingProject(names.get(name, name), item.serial, item.expect_page)
            for name, item in wanted.items()
        }

    def rebuild_roots(self, outcome: Refreshed) -> None:
        """Rewrite every mirrored root from PyPI's listing, by a full sync's rule.

        Listed projects with pages on disk, at their pages' serials; the roots
        on disk are not trusted for it.
        """
        listing, _ = self.fetch_listing()
        serials: dict[str, int] = dict(outcome.serials)
        present = bytearray(len(listing))  # a byte a listed project: it has pages on disk
        for index, (name, item) in enumerate(listing.items()):
            if self.writer.has_page(name):
                present[index] = 1
                if name not in serials:
                    self.on_disk_serial(serials, name, item)
        self.write_roots(
            lambda: (
                (name, item.display_name, serials.get(name, item.serial))
                for index, (name, item) in enumerate(listing.items())
                if present[index] and outcome.lists(name)
            ),
            record_change=True,
        )

    def settle(self, path: str, signed: tuf_audit.SignedTarget | None, in_flight: set[str]) -> None:
        """Relink `path`'s copy, then queue it for RSTUF unless RSTUF signs it as it is now.

        A path RSTUF already signs byte for byte (a tampered page restored from
        PyPI, a copy relinked) needs nothing sent; a path in an unfinished task
        is queued anyway, since that task will change what RSTUF signs.
        """
        from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

        served = os.fspath(self.layout.served_dir)
        file = self.layout.path_of_target(path)
        if file.is_file():
            self.writer.ensure_copy(file.parent, digest_file(file).hexdigest, file.name)
        in_step = not tuf_audit.differences(
            path, signed, tuf_audit.read_disk_facts(served, path, signed)
        )
        box = self.state.outbox
        if in_step and path not in in_flight:
            box.dirty.discard(path)
            box.signed.pop(path, None)
            return
        if path not in in_flight:  # the audit read what RSTUF signs: that copy is kept
            box.signed[path] = dict(signed.hashes).get(TUF_HASH_ALGORITHM, "") if signed else ""
        box.dirty.add(path)


def project_of_target(path: str) -> str | None:
    """The project whose page `path` is (``simple/<name>/index.html`` or ``index.v1_json``)."""
    name = path.removeprefix("simple/").partition("/")[0]
    if path not in {project_target(name, form.basename) for form in ALL_FORMATS}:
        return None
    try:
        return name if project_dir_name(name) == name else None
    except InvalidProjectName:
        return None


def audit_settings(config: Config) -> tuf_audit.AuditConfig:
    """The audit's settings from the run's (its timeouts, retries and fetch threads)."""
    from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

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
    "partly done (pages or RSTUF changes kept for the next run, also when changes are owed "
    "to RSTUF and no RSTUF URL is set: --no-rstuf runs without RSTUF); 130 stopped by "
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
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse settings, run once, return the exit code.

    Every run ends with the summary line, whatever its exit; --help, --version
    and --status, which are not runs, print none.
    """
    configure_logging(False, False)
    started = time.monotonic()
    summary = Summary()
    parsed: list[Config] = []  # the settings, once they are known

    def body() -> int:
        config = config_from(argv, build_parser())
        parsed.append(config)
        return run(config, summary)

    code = run_cli(log, body)
    if parsed and (parsed[0].status or (parsed[0].audit and not parsed[0].repair)):
        return code  # not a sync (an audit prints its own summary line, on stdout)
    if summary.started or code != EXIT_OK:
        summary.exit = code
        if not summary.started:
            summary.elapsed = time.monotonic() - started
        if summary.pending is None and parsed:
            count_owed_work(summary, parsed[0].state_file)
        summary_log.info("%s", summary.line())
    return code


def count_owed_work(summary: Summary, state_file: Path) -> None:
    """Pending and outbox counts for a run that never read its state (a locked mirror)."""
    with contextlib.suppress(Exception):  # a summary must never fail the run it reports
        if state_file.exists():
            state = load_state(state_file)
            summary.pending, summary.outbox = len(state.pending), len(state.outbox)
            summary.serial_before = summary.serial_after = state.serial


def run(config: Config, summary: Summary | None = None) -> int:
    configure_logging(config.verbose, config.quiet)
    if config.status:
        return show_status(MirrorLayout(config.mirror_dir).status_file, config.status_json)
    if config.metrics_file is not None and not config.metrics_file.parent.is_dir():
        raise UsageError(f"--metrics-file {config.metrics_file}: no such directory")
    summary_log.setLevel(logging.INFO)  # cron keeps one line per run, even under -q
    halt = Halt()  # ends the retry pauses of the fetch threads when the run stops fetching
    pypi = PypiClient(config.pypi_url, config, sleep=halt.sleep)
    try:
        rstuf = make_rstuf_client(config) if config.rstuf_url else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress(config.progress, config.progress_interval)
    try:
        sync = Sync(config, pypi, rstuf, progress, summary=summary, halt=halt)
        if config.watch:
            from pypi_index_mirror.sync.watch import Watch  # it drives a Sync: imported here

            return Watch(sync, config.watch).run()
        return sync.run_audit() if config.audit else sync.run()
    finally:
        progress.close()
        pypi.close()
        if rstuf is not None:
            rstuf.close()


if __name__ == "__main__":
    sys.exit(main())
