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
- ``http/``: the one HTTP environment every client is handed (read once by `run`), when
  they retry, and how much of an answer they read;
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
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
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
    Halt,
    MirrorFacts,
    MirrorMismatch,
    Verdict,
    canonical_url,
    check_identity,
    check_serial,
    locate_state,
    read_mirror_facts,
    state_elsewhere,
    write_marker,
)
from pypi_index_mirror.mirror.state import (
    PendingProject,
    State,
    clear_state_temps,
    load_state,
    new_mirror_id,
    save_state,
)
from pypi_index_mirror.mirror.store import (
    JSON_ROOT_TARGET,
    ROOT_TARGET,
    TUF_HASH_ALGORITHM,
    InvalidProjectName,
    MirrorLayout,
    MirrorLocked,
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
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_PARTIAL,
    Stopped,
    ToolError,
    UsageError,
    configure_logging,
    deferred_stops,
    failure,
    run_cli,
)
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.recorder import StatusRecorder
from pypi_index_mirror.ops.settings import Config, config_from
from pypi_index_mirror.ops.status import show_status
from pypi_index_mirror.rstuf import client as rstuf_client
from pypi_index_mirror.rstuf.outbox import RstufDelivery, WaitBudget
from pypi_index_mirror.sync import dry_run, revalidate
from pypi_index_mirror.sync.fetch_loop import fetch_each
from pypi_index_mirror.sync.page_steps import Fetched, NotFetched, PageSteps
from pypi_index_mirror.sync.plan import (
    full_sync_fetches,
    json_root_changes,
    listing_refusal,
    root_changes,
)
from pypi_index_mirror.upstream.changelog import (
    Listing,
    add_listed,
    identity_changes,
    merge_pending,
    projects_to_refresh,
)
from pypi_index_mirror.upstream.client import PypiClient
from pypi_index_mirror.upstream.errors import UntrustedListing, XmlRpcUnavailable
from pypi_index_mirror.upstream.pages import FetchedPage

if TYPE_CHECKING:
    # imported where an audit or the bootstrap check runs: python-tuf and its signers
    # (boto3 among them) were 20 MiB and a third of every run's start-up
    from pypi_index_mirror.audit import tuf as tuf_audit
    from pypi_index_mirror.mirror.storage import Storage

log = logging.getLogger(__name__)
# The one line every run ends with, whatever its exit; INFO even under -q (see `main`).
summary_log = log.getChild("summary")  # kept at INFO under -q

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
    rstuf_sent: int = 0  # artifacts this run sent to RSTUF
    rstuf_confirmed: int = 0  # paths RSTUF confirmed in this run, whichever run sent them
    rstuf_not_found: int = 0  # deletes RSTUF answered with not_found_artifacts (see deliver)
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
            f"rstuf_sent={self.rstuf_sent} rstuf_confirmed={self.rstuf_confirmed} "
            f"rstuf_not_found={self.rstuf_not_found} rstuf_waited={self.rstuf_waited:.1f}s "
            f"elapsed={self.elapsed:.1f}s "
            f"serial={self.serial_before}->{self.serial_after} "
            f"pending={unknown if self.pending is None else self.pending} "
            f"outbox={unknown if self.outbox is None else self.outbox} exit={self.exit}"
        )


class RstufMisconfiguredError(ToolError):
    """RSTUF refused the run's requests in a way no retry fixes (401, 403, not an RSTUF).

    Exit 1, not 75: a person must fix the token, the proxy or the URL, and a unit
    that counts 75 as success would hide it. The state is saved first.
    """


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
        self.state_file = config.state_file  # where it is read (see locate_state)
        self.loaded = False  # self.state is the state file's
        self.identified = False  # ... and was found to belong to this mirror and upstream
        self.writer = MirrorWriter(self.layout, self.state)
        self.forms = SIMPLE_FORMATS[config.simple_format]
        self.filter = config.project_filter
        self.source = JSON_ROOT_SOURCE if config.no_xmlrpc else XMLRPC_SOURCE
        self.source_noted = False
        self.listing_seen = 0  # the last listing's entries before the filter (fetch_listing)
        self.quarantined_on_disk: set[str] = set()  # listed, current on disk, quarantined
        self.membership_changed = False
        self.bootstrap_refusal: str | None = None  # why this run keeps changes from RSTUF
        self.budget = WaitBudget(config.rstuf_wait)  # one for the whole run
        self.delivery: RstufDelivery | None = None
        # RSTUF refused as misconfigured (401, 403, no RSTUF at the URL): nothing more is
        # sent this run, and the run ends with exit 1 once the mirror is saved
        self.rstuf_misconfigured: rstuf_client.RstufMisconfigured | None = None
        self.pages_changed = False
        self.marker_owed = False  # write the marker before the next state save
        self.storage: Storage | None = None  # --storage: the served tree's store (bucket)
        self.upstream_changed = False
        self.applying = False  # inside a section a signal must not cut: do not save then
        self.breaker = CircuitBreaker(config.failure_limit)
        self.halt = halt or Halt()  # the PypiClient's retry pauses should wait on it too
        self.untracked = 0  # pages a full sync still owes that state.pending does not list
        self.status = StatusRecorder(
            self.layout.status_file,
            self.layout.staging_dir,
            config.metrics_file,
            rstuf_used=not config.no_rstuf,
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
            if self.storage is not None:
                self.storage.close()  # and logs the requests the store was asked

    def sync(self) -> int:
        config = self.config
        if not config.dry_run and not self.layout.root.exists():
            self.find_state(move=False)  # nothing to move yet: a state in the served tree?
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
        self.report_rstuf_surprises()

    def exit_code(self) -> int:
        if self.config.dry_run:
            return EXIT_OK
        return EXIT_PARTIAL if self.summary.problems or self.pending_count() else EXIT_OK

    def start(self) -> int | None:
        """Under the lock: clear leftovers, check state and mirror; return PyPI's last serial.

        Every refusal comes before anything is written (but status.json, which records it).
        """
        config = self.config
        self.find_state(move=not config.dry_run)
        if not config.dry_run:
            clear_staging(self.layout.staging_dir)
            clear_state_temps(self.state_file)
        verdict, facts = self.check_identity()
        last_serial = self.xmlrpc_last_serial()
        if last_serial is not None and not verdict.upstream_changed:
            check_serial(self.state.serial, last_serial, self.upstream, self.state_file)
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

    def find_state(self, move: bool) -> None:
        """Where the state is read and saved: the default, once the previous default's is moved."""
        config = self.config
        self.state_file = locate_state(
            config.state_file, config.state_path is not None, self.layout, move=move
        )

    def check_identity(self) -> tuple[Verdict, MirrorFacts]:
        """Read the state and the mirror; refuse (MirrorMismatch) if they do not belong together."""
        self.state = load_state(self.state_file)
        self.writer = self.make_writer()
        self.loaded = True
        self.summary.serial_before = self.state.serial
        if self.storage is None:
            facts = read_mirror_facts(self.layout)
        else:
            from pypi_index_mirror.mirror.storage import storage_facts

            facts = storage_facts(self.layout, self.storage)
        verdict = check_identity(
            self.state,
            facts,
            self.upstream,
            self.config.full_check,
            self.state_file,
            new_mirror_id(),
            None if self.state.read_schema else state_elsewhere(self.state_file, self.layout),
        )
        return verdict, facts

    def make_writer(self) -> MirrorWriter:
        """The writer for the served tree: on disk, or in the --storage bucket (opened once)."""
        if not self.config.storage:
            return MirrorWriter(self.layout, self.state)
        # only with --storage: a directory mirror never loads the store's code (or boto3)
        from pypi_index_mirror.mirror.storage import StoreWriter, open_storage

        if self.storage is None:
            self.storage = open_storage(
                self.config.storage, self.layout, self.config.retries, self.config.backoff
            )
        return StoreWriter(self.layout, self.state, self.storage)

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
            if self.storage is None:
                write_marker(self.layout, self.state.mirror_id or "")
            else:
                self.storage.write_marker(self.state.mirror_id or "")
            self.marker_owed = False
        crash_point("state-save", (why,))
        save_state(self.state_file, self.state)

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
        return f"state saved {self.state_stands()}; the next run resumes"

    def state_stands(self) -> str:
        """Where the saved state stands, for a line an operator reads."""
        pending = self.pending_count()
        if self.state.serial is None:  # no serial before the first sync ends
            return f"with the first sync unfinished, {pending} project(s) still to fetch"
        return f"at serial {self.state.serial} with {pending} project(s) pending"

    def settle_summary(self) -> None:
        summary = self.summary
        summary.requests = self.pypi.requests_made
        summary.rstuf_waited = self.budget.spent
        if self.delivery is not None:  # counted as they happen: a stop mid-delivery loses none
            totals = self.delivery.totals
            summary.rstuf_sent, summary.rstuf_confirmed = totals.sent, totals.confirmed
            summary.rstuf_not_found = len(totals.not_found)
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
        allows = None if self.filter.everything else self.counting_allows
        self.listing_seen = 0
        if self.source == XMLRPC_SOURCE:
            wanted = Listing(self.spill_dir())
            try:
                if last_serial is None:
                    last_serial = self.upstream_last_serial()
                self.pypi.list_packages_with_serial(
                    functools.partial(add_listed, wanted, allows=allows)
                )
                self.note_source()
                if allows is None:
                    self.listing_seen = len(wanted)
                return wanted, last_serial
            except XmlRpcUnavailable as exc:
                self.fall_back(exc)
        wanted = Listing(self.spill_dir())
        last_serial = self.pypi.list_projects_json(
            functools.partial(add_listed, wanted, allows=allows)
        )
        if allows is None:
            self.listing_seen = len(wanted)
        self.summary.upstream_serial, self.summary.upstream_seen = last_serial, time.time()
        self.note_source()
        return wanted, last_serial

    def counting_allows(self, name: str) -> bool:
        """The filter's verdict on a listed name, counted (`check_listing` needs the
        listing's size before the filter)."""
        self.listing_seen += 1
        return self.filter.allows(name)

    def check_listing(self, listed: int, held: int, serial: int | None) -> None:
        """Refuse (UntrustedListing) a listing too empty or small to be the index's, unless
        --trust-listing; before anything is written, so state and tree stay as they were."""
        reason = listing_refusal(self.listing_seen, listed, held, serial)
        if reason is None:
            return
        source = (
            "list_packages_with_serial" if self.source == XMLRPC_SOURCE else "JSON root /simple/"
        )
        if not self.config.trust_listing:
            raise UntrustedListing(source, reason)
        log.warning("PyPI's %s %s; taken as the truth (--trust-listing)", source, reason)

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
        starting = not self.state.full_sync_in_progress
        # --full-check into an empty mirror registers every page with RSTUF (the way out
        # when RSTUF signs pages already); a first sync leaves them to the bootstrap CSV
        first = starting and self.state.serial is None and not self.config.full_check
        first = first and not (self.writer.target_exists(ROOT_TARGET) or self.writer.any_project())
        if first:
            self.refuse_first_sync_under_signed_pages()
        wanted, last_serial = self.fetch_listing(last_serial)
        target = min(last_serial, wanted.max_serial(default=last_serial))
        excluded: set[str] = set()  # on disk, and the filter excludes them now
        serials: dict[str, int] = {}  # page serials newer than the listing's, for the JSON root
        # --full-check: archiving leaves the serial as it was, so every listed page is fetched
        on_disk = (
            None if self.config.full_check else functools.partial(self.on_disk_serial, serials)
        )
        to_fetch = full_sync_fetches(
            wanted, self.allowed_local(excluded), on_disk, self.state.pending
        )
        self.check_listing(len(wanted), to_fetch.local_seen, last_serial)
        if starting:
            self.state.first_sync = first
            self.state.full_sync_in_progress = True
            self.save("full-sync-started")
        first = self.state.first_sync
        kind = "first sync" if first else "full check"
        log.info("%s: %d projects listed at serial %d", kind, len(wanted), target)
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

    def refuse_first_sync_under_signed_pages(self) -> None:
        """Refuse a first sync into an empty mirror while RSTUF's TUF metadata signs a root.

        A first sync tells RSTUF nothing (its pages reach RSTUF through the bootstrap
        CSV). If RSTUF already signs this mirror's pages, the mirror directory was lost
        or replaced (``rm -rf`` with the state inside it, another disk): a first sync
        would end with exit 0 while RSTUF goes on signing the old bytes of every page
        that changed meanwhile. Checked when a metadata URL is configured; a root
        index of either form signed means pages are. Raises MirrorMismatch.
        """
        config = self.config
        if config.tuf_metadata_url is None or not self.owes_rstuf:
            return
        from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

        way_out = (
            "run with --full-check instead: it fetches every page and registers each with "
            "RSTUF (or restore the mirror and its state.json from a backup)"
        )
        settings_ = audit_settings(config)
        try:
            signed = [
                form.root_target
                for form in ALL_FORMATS
                if tuf_audit.signed_target(settings_, form.root_target) is not None
            ]
        except tuf_audit.AuditError as exc:
            raise MirrorMismatch(
                f"cannot check whether RSTUF already signs pages before a first sync into "
                f"{self.layout.root.absolute()} ({exc}): fix --tuf-metadata-url or --tuf-root; "
                f"if RSTUF does sign this mirror's pages, {way_out}"
            ) from None
        if signed:
            raise MirrorMismatch(
                f"RSTUF's TUF metadata at {config.tuf_metadata_url} signs {signed[0]} already, "
                f"but {self.layout.root.absolute()} holds no mirror (lost? another disk?): a "
                "first sync would register nothing and leave RSTUF signing the old pages; "
                f"{way_out}"
            )

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
        outcome.unlisted |= self.quarantined_on_disk  # current, not fetched, quarantined
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

        if done or self.writer.any_project():  # never an empty root for a failed sync
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
        return self.writer.target_exists(target)

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
        if any(not self.writer.has_page(name, form.basename) for form in others):
            return None
        if serial > listed.serial:
            serials[name] = serial
        if serial >= listed.serial and self.writer.quarantined(name, primary.basename):
            # current, so not fetched: its page, not PyPI's listing (which names
            # quarantined projects too), says it leaves the roots
            self.quarantined_on_disk.add(name)
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
        old_digest = self.writer.root_digest(path)
        if old_digest is None:
            return
        if self.config.dry_run:
            self.out(f"remove {form.root_target}")
            return
        self.writer.retire(path.parent / prefixed_name(old_digest, path.name))
        if record_change and self.owes_rstuf:
            self.state.outbox.owe({form.root_target: old_digest})
        self.save("root-intent")  # intent first, as for pages
        self.writer.unlink_target(path)

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
        for line in dry_run.update_plan(since, newest, to_fetch, outbox, root, self.forms):
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
        held = 0
        for name, display, listed in self.root_members_in(listing):
            held += 1
            if listed is None:
                unlisted[name] = display
            elif listed.display_name != display:
                renamed.add(name)
        self.check_listing(len(listing), held, root_serial)
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
        if HTML in self.forms and self.writer.target_exists(ROOT_TARGET):
            with self.writer.open_target(self.layout.root_page) as current:
                yield from iter_root_index(current)
        elif self.writer.target_exists(JSON_ROOT_TARGET):
            with self.writer.open_target(self.layout.json_root_page) as current:
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
            with self.writer.open_target(self.layout.path_of_target(form.root_target)) as current:
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
        self.writer.make_directory(directory)
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
        steps = PageSteps(
            self.pypi,
            self.writer,
            self.forms,
            self.breaker,
            self.halt,
            record_changes=record_changes,
            read_old=not nothing_on_disk,
            dry_run=self.config.dry_run,
            revalidating=self.revalidating,
        )
        fetches = self.fetch_all(steps, wanted)
        self.progress.start(len(wanted), "fetching")
        batch: list[list[Change]] = []
        try:
            for fetched in fetches:
                name, item, result = fetched.name, fetched.item, fetched.pages
                if isinstance(result, NotFetched):  # not done: the progress line says so
                    self.not_fetched(name, item, outcome, keep_unfetched)
                    continue
                self.progress.advance(failed=isinstance(result, Exception))
                if isinstance(result, Exception):
                    self.keep_pending(name, item, result)
                    outcome.failed.add(name)
                    continue
                if name in self.state.pending:
                    settled.add(name)
                if result is None:  # new pages, written as they arrived (PageSteps)
                    self.written_at_once(fetched, outcome)
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
            fetches.close()  # on an error too: drop the transfers in flight
        self.apply_batch(batch, record_changes)
        self.progress.finish(
            f"stopped, {outcome.unfetched} not fetched" if outcome.unfetched else "done"
        )
        for name in settled:  # only now: an intent save must keep them
            self.state.pending.pop(name, None)
        if self.halt.reason is not None:
            self.summary.problems.append(
                f"{self.halt.reason}: stopped fetching; {outcome.unfetched} project(s) not "
                "fetched are kept for the next run"
            )
        return outcome

    def written_at_once(self, fetched: Fetched, outcome: Refreshed) -> None:
        """Count new pages written as they arrived, as `apply_batch` would have (nothing to
        retire)."""
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
        self, steps: PageSteps, wanted: Mapping[str, PendingProject]
    ) -> Iterator[Fetched]:
        """Every project of `wanted` fetched by the one engine (`fetch_loop`), as each ends.

        The engine runs on this thread while the caller asks for results: a
        first sync's new pages are written by `steps` as they arrive, anything
        else goes to the caller's batch. Once the halt is set (circuit
        breaker, or a signal seen at the engine's next turn) no more pages are
        requested: the transfers in flight are dropped, the retry pauses end,
        and every project left comes back NOT_FETCHED. Closing this early (an
        error or a second signal in the caller) halts the run the same way.
        """
        items = iter(wanted.items())  # in `wanted`'s order, no lookup per project
        results = fetch_each(steps, items, self.config.workers, self.pypi.page_loop)
        finished = False
        try:
            # not `yield from`: closed early, the halt is set before the engine is closed
            for fetched in results:  # noqa: UP028
                yield fetched
            finished = True
        finally:
            if not finished:  # closed early: an error or a second signal in the consumer
                self.halt.set("the run is ending")
            results.close()  # type: ignore[attr-defined]

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
        if self.rstuf_misconfigured is not None:
            return  # refused once already: the changes wait in the outbox
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
                read_target=self.writer.target_digest,
            )
        self.progress.start(self.unconfirmed(), "delivering", unit="paths")
        report = self.delivery.deliver(wait)
        left = self.unconfirmed()
        self.progress.finish("done" if not left else f"{left} not confirmed yet")
        self.writer.restart_grace(report.superseded)
        self.save("delivered")
        self.summary.problems.extend(f"RSTUF: {error}" for error in report.errors)
        self.rstuf_misconfigured = report.misconfigured

    def report_rstuf_surprises(self) -> None:
        """At the end of a run: what RSTUF answered that waiting cannot fix.

        Deletes RSTUF answered with ``not_found_artifacts`` for paths the mirror
        recorded as signed mean RSTUF's database and the mirror were apart (a
        restored backup, a manual change): one warning, and the run ends 75,
        since whatever else differs is found only by --audit. A misconfigured
        RSTUF (401, 403, no RSTUF at the URL) ends the run with exit 1 once
        the state is saved: the changes wait in the outbox, none is lost.
        """
        not_found = self.delivery.totals.not_found if self.delivery is not None else []
        if not_found:
            shown = ", ".join(not_found[:5]) + (", ..." if len(not_found) > 5 else "")
            self.summary.problems.append(
                f"RSTUF answered {len(not_found)} delete(s) with not_found_artifacts ({shown}): "
                "it did not hold paths the mirror recorded as signed, so its database and the "
                "mirror were apart; run --audit to find what else differs (--audit --repair "
                "fixes it)"
            )
        if self.rstuf_misconfigured is not None:
            for problem in dict.fromkeys(self.summary.problems):
                log.warning("%s", problem)
            self.summary.problems.clear()
            raise RstufMisconfiguredError(
                f"{self.rstuf_misconfigured}; the mirror is updated and its "
                f"{len(self.state.outbox)} change(s) for RSTUF wait in the outbox until "
                "RSTUF accepts them"
            )

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
                signed = tuf_audit.signed_target(
                    audit_settings(self.config), root, self.pypi.environment
                )
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
        if self.config.storage:
            self.writer = self.make_writer()  # opens the bucket: a missing one is refused here
        elif not served.is_dir():
            raise ToolError(
                f"{served}: no served tree to audit (check --mirror-dir, or run pypi_mirror.py "
                "until its first sync finishes)"
            )
        if not self.config.repair:
            with mirror_lock(self.layout.lock_path):
                report = self.audit_tree()
            return EXIT_AUDIT_DIFFERS if report.differences else EXIT_OK
        self.summary.started = True
        try:
            with mirror_lock(self.layout.lock_path), self.recording():
                self.find_state(move=True)
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
                self.find_state(move=False)
                self.state = load_state(self.state_file)
            except ToolError as exc:  # damaged, or two of them: the audit is part of recovery
                log.warning("%s; auditing without it", exc)
        owed = self.state.outbox.dirty | self.state.outbox.in_flight_paths()
        owed_found: set[str] = set()
        from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

        def emit(difference: tuf_audit.Difference) -> None:
            self.out(difference.line())
            if difference.path in owed:
                owed_found.add(difference.path)
            if also is not None:
                also(difference)

        listing = None
        if self.storage is not None:
            from pypi_index_mirror.mirror.storage import audit_listing

            listing = audit_listing(self.storage)
        report = tuf_audit.audit(
            audit_settings(self.config),
            self.layout,
            emit,
            environment=self.pypi.environment,
            listing=listing,
        )
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
        clear_state_temps(self.state_file)
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
            # Every project fetched gets its root line from what PyPI served now, as an
            # update does for a project whose identity changed: a repair has no changelog
            # to say which did, and a project removed upstream whose page was gone here
            # already changed no page that would move the roots.
            self.finish_update(self.displayed(wanted), outcome, renamed=set(wanted))
        in_flight = self.state.outbox.in_flight_paths()
        for path in differing:
            if project_of_target(path) not in outcome.failed:
                self.settle(path, differing[path], in_flight)
        sync_filesystem(self.layout.root)  # never register bytes a power cut could take back
        self.save("repaired")
        self.deliver_outbox(wait=True)
        self.report_rstuf_surprises()
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
                if present[index] and outcome.lists(name) and name not in self.quarantined_on_disk
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
        if self.storage is not None:
            found = self.stored_facts(path, signed)
        else:
            if file.is_file():
                self.writer.ensure_copy(file.parent, digest_file(file).hexdigest, file.name)
            found = tuf_audit.read_disk_facts(served, path, signed)
        in_step = not tuf_audit.differences(path, signed, found)
        box = self.state.outbox
        if in_step and path not in in_flight:
            box.dirty.discard(path)
            box.signed.pop(path, None)
            return
        if path not in in_flight:  # the audit read what RSTUF signs: that copy is kept
            box.signed[path] = dict(signed.hashes).get(TUF_HASH_ALGORITHM, "") if signed else ""
        box.dirty.add(path)

    def stored_facts(self, path: str, signed: tuf_audit.SignedTarget | None) -> tuf_audit.DiskFacts:
        """`settle`'s facts for a bucket (--storage): the page read, its copy put if lost."""
        from pypi_index_mirror.audit import tuf as tuf_audit  # see TYPE_CHECKING above

        try:
            digest = self.writer.target_digest(path)
        except FileNotFoundError:
            return tuf_audit.NO_FILE
        file = self.layout.path_of_target(path)
        self.writer.ensure_copy(file.parent, digest.hexdigest, file.name)
        copies = {digest.hexdigest: digest.length}
        if signed is not None and signed.copy_digest not in copies:
            old = f"{path.rpartition('/')[0]}/" if "/" in path else ""
            old_copy = f"{old}{prefixed_name(signed.copy_digest, file.name)}"
            if self.storage is not None and self.storage.exists(old_copy):
                copies[signed.copy_digest] = signed.length  # kept as written: named by digest
        listed = tuf_audit.Listed(digest.length, digest.hexdigest, copies)
        return tuf_audit.listed_disk_facts(listed, signed)


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
    "advanced past what is on disk; a local I/O error names the file, the cause and the fix, "
    "then run again; --audit: metadata unreachable, badly signed or expired; "
    "RSTUF answered 401 or 403, or its URL is no RSTUF API: changes wait in the outbox); "
    "2 usage error; 3 another run holds the mirror lock; 4 --audit found differences; 75 "
    "partly done (pages or RSTUF changes kept for the next run, also when changes are owed "
    "to RSTUF and no RSTUF URL is set: --no-rstuf runs without RSTUF; or RSTUF answered "
    "deletes with not_found_artifacts: run --audit); 130 stopped by SIGINT; 141 standard "
    "output's reader went away (--status | head -1; quiet); 143 stopped by SIGTERM."
)


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser("pypi_mirror.py", DESCRIPTION, EPILOG)


def make_rstuf_client(
    config: Config, environment: HttpEnvironment | None = None
) -> rstuf_client.RstufClient:
    environment = environment if environment is not None else read_environment(config)
    return rstuf_client.RstufClient(
        config.rstuf_url or "",
        token=config.rstuf_token,
        environment=environment,
        timeout=environment.limits.timeout,
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
    for removed in settings.REMOVED_OPTIONS:
        if removed.key in config.removed_options:
            log.warning("%s", removed.warning)
    if config.mirror_dir.exists() and not config.mirror_dir.is_dir():
        raise UsageError(
            f"--mirror-dir {config.mirror_dir} is not a directory: give the mirror's "
            "directory (a new one is created)"
        )
    if config.status:
        return show_status(MirrorLayout(config.mirror_dir).status_file, config.status_json)
    summary = summary if summary is not None else Summary()
    started = time.time()
    syncs: list[Sync] = []
    try:
        return run_sync(config, summary, syncs.append)
    except BaseException as exc:
        if not (syncs and syncs[0].status.begun):  # else recorded under the lock already
            record_failure_before_lock(config, summary, exc, started)
        raise


def run_sync(config: Config, summary: Summary, made: Callable[[Sync], None]) -> int:
    """A sync, or an audit, with its clients; `made` is told the Sync once it exists."""
    if config.metrics_file is not None and not config.metrics_file.parent.is_dir():
        raise UsageError(f"--metrics-file {config.metrics_file}: no such directory")
    if config.metrics_file is not None and config.metrics_file.is_dir():
        raise UsageError(
            f"--metrics-file {config.metrics_file}: is a directory; name a file in it, "
            f"e.g. {config.metrics_file / 'pypi_mirror.prom'}"
        )
    summary_log.setLevel(logging.INFO)  # cron keeps one line per run, even under -q
    halt = Halt()  # ends the retry pauses of the fetch threads when the run stops fetching
    environment = read_environment(config)  # once: every client of the run gets this one
    pypi = PypiClient(config.pypi_url, config, sleep=halt.sleep, environment=environment)
    try:
        rstuf = make_rstuf_client(config, environment) if config.rstuf_url else None
    except ValueError as exc:
        pypi.close()
        raise UsageError(str(exc)) from None
    progress = Progress(config.progress, config.progress_interval)
    try:
        sync = Sync(config, pypi, rstuf, progress, summary=summary, halt=halt)
        made(sync)
        if config.watch:
            from pypi_index_mirror.sync.watch import Watch  # it drives a Sync: imported here

            return Watch(sync, config.watch).run()
        return sync.run_audit() if config.audit else sync.run()
    finally:
        progress.close()
        pypi.close()
        if rstuf is not None:
            rstuf.close()


def record_failure_before_lock(
    config: Config, summary: Summary, exc: BaseException, started: float
) -> None:
    """Record in status.json and the metrics a run that failed before it held the lock.

    A refusal before the lock (a missing mirror directory, a usage error found
    once the mirror is known) is a failed run all the same, and monitoring
    must see it. status.json is written only under the mirror's lock, taken
    here for that: if another run holds it (the lock conflict itself, or a run
    that started meanwhile), that run's record stands and nothing is written.
    Without a mirror directory only the metrics are written: creating the
    directory for a status file would turn a missing mirror into an empty one.
    Dry runs and plain audits record nothing, as always; writing never changes
    how the run ends.
    """
    if config.dry_run or (config.audit and not config.repair):
        return
    code, error = failure(exc)
    if code == EXIT_LOCKED:
        return
    layout = MirrorLayout(config.mirror_dir)
    metrics = config.metrics_file
    if metrics is not None and (metrics.is_dir() or not metrics.parent.is_dir()):
        metrics = None  # that file may be what failed
    recorder = StatusRecorder(
        layout.status_file, layout.staging_dir, metrics, rstuf_used=not config.no_rstuf
    )
    summary.exit = code
    if not summary.started:
        summary.elapsed = time.time() - started
    if summary.pending is None:
        count_owed_work(summary, config.state_file)
    with contextlib.suppress(Exception):  # a record must never change how the run ends
        if layout.root.is_dir():
            try:
                with mirror_lock(layout.lock_path):
                    recorder.begin(started)
                    recorder.end(code, error, summary, None)
                return
            except MirrorLocked:
                return  # another run holds the mirror: its record stands
            except OSError:
                pass  # the lock cannot be taken here: the metrics alone, below
        if metrics is not None:
            recorder.metrics_only(code, error, summary, started)


if __name__ == "__main__":
    sys.exit(main())
