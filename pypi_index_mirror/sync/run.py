"""One run's lifecycle: the lock, state and identity, status, stops, and the phases in order.

`Sync` is what a run (or a --watch cycle) is: it takes the mirror lock, reads
state.json and checks that state, mirror and upstream belong together,
records the run in status.json, saves what is durable when a signal stops it,
and in `catch_up` calls the phases in their order: deliver the outbox, then
the first sync or full check (``full_sync``) or an update (``update``) and a
share of revalidation (``revalidation``), then deliver again (``delivery``).
Each phase is an object of its own module, handed the one `RunContext`
(``context``); the command line that builds a `Sync` is ``ops.command``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pypi_index_mirror.mirror.safety import (
    Halt,
    MirrorFacts,
    Verdict,
    check_identity,
    check_serial,
    locate_state,
    read_mirror_facts,
    state_elsewhere,
)
from pypi_index_mirror.mirror.state import clear_state_temps, load_state, new_mirror_id
from pypi_index_mirror.mirror.store import clear_staging, mirror_lock, sync_filesystem
from pypi_index_mirror.ops.cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, Stopped, failure
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.recorder import StatusRecorder
from pypi_index_mirror.ops.settings import Config
from pypi_index_mirror.sync.context import RunContext, Summary
from pypi_index_mirror.sync.delivery import Delivery
from pypi_index_mirror.sync.full_sync import FullSync
from pypi_index_mirror.sync.refresh import Refresher
from pypi_index_mirror.sync.revalidation import Revalidation
from pypi_index_mirror.sync.roots import Roots
from pypi_index_mirror.sync.source import Source
from pypi_index_mirror.sync.update import Update
from pypi_index_mirror.upstream.client import PypiClient

if TYPE_CHECKING:  # RSTUF's client (and requests) load only when a run uses RSTUF
    from pypi_index_mirror.rstuf import client as rstuf_client

log = logging.getLogger(__name__)


class Sync:
    """One run: deliver what RSTUF is owed, bring the mirror up to date, deliver again."""

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
        ctx = self.ctx = RunContext(config, pypi, rstuf, progress, out, summary, halt)
        self.source = Source(ctx)
        self.refresher = Refresher(ctx)
        self.roots = Roots(ctx)
        self.full = FullSync(ctx, self.source, self.refresher, self.roots)
        self.updates = Update(ctx, self.source, self.refresher, self.roots)
        self.revalidation = Revalidation(ctx, self.refresher, self.roots)
        self.delivery = Delivery(ctx)
        self.status = StatusRecorder(
            ctx.layout.status_file,
            ctx.layout.staging_dir,
            config.metrics_file,
            rstuf_used=not config.no_rstuf,
        )
        self.started = time.monotonic()
        self.revalidate_limit: int | None = None  # pages one revalidation checks at most

    # the run

    def run(self) -> int:
        """Run once; raises ToolError (a refusal or failure) or Stopped (a signal)."""
        self.started = time.monotonic()
        self.ctx.summary.started = True
        try:
            return self.sync()
        except Stopped as stop:
            if stop.note:  # stopped under the lock: what was saved is said already
                raise
            raise Stopped(stop.signum, self.save_after_stop()) from None
        finally:
            self.settle_summary()
            if self.ctx.storage is not None:
                self.ctx.storage.close()  # and logs the requests the store was asked

    def sync(self) -> int:
        config = self.ctx.config
        if not config.dry_run and not self.ctx.layout.root.exists():
            self.find_state(move=False)  # nothing to move yet: a state in the served tree?
            self.check_identity()  # before the lock, which would create the directory
        with mirror_lock(self.ctx.layout.lock_path, read_only=config.dry_run), self.recording():
            try:
                self.sync_locked()
            except Stopped as stop:  # saved inside the lock, and recorded with what was saved
                raise Stopped(stop.signum, self.save_after_stop()) from None
        for problem in dict.fromkeys(self.ctx.summary.problems):  # each once, in order
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
        config = self.ctx.config
        self.delivery.forget_rstuf_if_disabled()
        if self.ctx.state.outbox.dirty and not config.dry_run:
            # a killed run may have left pages unflushed: never register bytes
            # that a power cut could still take back
            sync_filesystem(self.ctx.layout.root)
        self.delivery.deliver_outbox(wait=False)  # old tasks get their publish while we update
        for name in [n for n in self.ctx.state.pending if not self.ctx.filter.allows(n)]:
            del self.ctx.state.pending[name]  # excluded now: never fetched again
        if self.needs_full_sync():
            self.full.full_sync(last_serial)
            cursor = self.ctx.state.revalidation  # every page was just checked
            self.ctx.state.revalidation = dataclasses.replace(cursor, at=time.time())
        else:
            self.updates.update(last_serial)
            if revalidating:
                self.revalidation.revalidate(self.revalidate_limit)
        self.ctx.state.filters = self.ctx.filter
        if config.dry_run:
            return
        sync_filesystem(self.ctx.layout.root)  # every page durable before the serial moves
        self.ctx.save("run-end")
        self.delivery.deliver_outbox(wait=wait)
        # after the delivery: what RSTUF just confirmed frees the copies it replaced
        self.ctx.writer.collect_retired(self.ctx.config.grace)
        self.ctx.save()
        self.delivery.report_rstuf_surprises()

    def exit_code(self) -> int:
        if self.ctx.config.dry_run:
            return EXIT_OK
        return EXIT_PARTIAL if self.ctx.summary.problems or self.ctx.pending_count() else EXIT_OK

    def start(self) -> int | None:
        """Under the lock: clear leftovers, check state and mirror; return PyPI's last serial.

        Every refusal comes before anything is written (but status.json, which records it).
        """
        config = self.ctx.config
        self.find_state(move=not config.dry_run)
        if not config.dry_run:
            clear_staging(self.ctx.layout.staging_dir)
            clear_state_temps(self.ctx.state_file)
        verdict, facts = self.check_identity()
        last_serial = self.source.xmlrpc_last_serial()
        if last_serial is not None and not verdict.upstream_changed:
            check_serial(self.ctx.state.serial, last_serial, self.ctx.upstream, self.ctx.state_file)
        self.record_identity(verdict, facts)
        return last_serial

    def find_state(self, move: bool) -> None:
        """Where the state is read and saved: the default, once the previous default's is moved."""
        config = self.ctx.config
        self.ctx.state_file = locate_state(
            config.state_file, config.state_path is not None, self.ctx.layout, move=move
        )

    def check_identity(self) -> tuple[Verdict, MirrorFacts]:
        """Read the state and the mirror; refuse (MirrorMismatch) if they do not belong together."""
        self.ctx.state = load_state(self.ctx.state_file)
        self.ctx.writer = self.ctx.make_writer()
        self.ctx.loaded = True
        self.ctx.summary.serial_before = self.ctx.state.serial
        if self.ctx.storage is None:
            facts = read_mirror_facts(self.ctx.layout)
        else:
            from pypi_index_mirror.mirror.storage import storage_facts

            facts = storage_facts(self.ctx.layout, self.ctx.storage)
        verdict = check_identity(
            self.ctx.state,
            facts,
            self.ctx.upstream,
            self.ctx.config.full_check,
            self.ctx.state_file,
            new_mirror_id(),
            None
            if self.ctx.state.read_schema
            else state_elsewhere(self.ctx.state_file, self.ctx.layout),
        )
        return verdict, facts

    def record_identity(self, verdict: Verdict, facts: MirrorFacts) -> None:
        """Take the verdict's identity into the state; the next save makes it durable."""
        for note in verdict.notes:
            log.info("%s", note)
        for warning in verdict.warnings:
            log.warning("%s", warning)
        state = self.ctx.state
        if state.read_schema == 1 and state.serial is None and state.full_sync_in_progress:
            # release 1.0 wrote the root index only at the end of a first sync
            state.first_sync = not facts.root_index
        state.mirror_id, state.mirror_dir = verdict.mirror_id, str(facts.directory)
        state.upstream = self.ctx.upstream
        self.ctx.identity = verdict
        self.ctx.marker_owed = verdict.write_marker

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record the run in status.json (and --metrics-file) when it starts and however it ends.

        The one place a run's end is recorded, inside the lock: an exception
        (a failure, SIGTERM) is recorded with its exit code and line, then goes on
        to `run_cli`. A dry run changes nothing, so it records nothing.
        """
        if self.ctx.config.dry_run:
            yield
            return
        unread = self.ctx.state  # replaced when state.json is loaded; kept if that failed
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
            self.ctx.summary.exit = exit_code
            # a --watch cycle after the first records the state it was identified with
            identified = self.ctx.identity is not None
            loaded = self.ctx.state if self.ctx.state is not unread or identified else None
            self.status.end(exit_code, error, self.ctx.summary, loaded)

    def needs_full_sync(self) -> bool:
        state = self.ctx.state
        if state.serial is not None and state.formats != self.ctx.form_words:
            log.info(
                "page forms change from %s to %s: checking every project",
                "+".join(state.formats),
                "+".join(self.ctx.form_words),
            )
            return True
        return state.serial is None or state.full_sync_in_progress or self.ctx.config.full_check

    def save_after_stop(self) -> str:
        """Save what is durable after a signal; return what the stop line adds."""
        if self.ctx.identity is None:
            return "nothing was changed"
        if self.ctx.config.dry_run:
            return "nothing was changed (dry run)"
        if self.ctx.applying:  # a second signal cut a batch: the last saved state is consistent
            return "the state saved last stays; the next run resumes from it"
        try:
            if self.ctx.layout.root.exists():
                sync_filesystem(self.ctx.layout.root)
            self.ctx.save("stopped")
        except OSError as exc:
            return f"the state could not be saved ({exc}); the next run resumes from the last one"
        return f"state saved {self.state_stands()}; the next run resumes"

    def state_stands(self) -> str:
        """Where the saved state stands, for a line an operator reads."""
        pending = self.ctx.pending_count()
        if self.ctx.state.serial is None:  # no serial before the first sync ends
            return f"with the first sync unfinished, {pending} project(s) still to fetch"
        return f"at serial {self.ctx.state.serial} with {pending} project(s) pending"

    def settle_summary(self) -> None:
        summary = self.ctx.summary
        summary.requests = self.ctx.pypi.requests_made
        summary.rstuf_waited = self.delivery.budget.spent
        delivery = self.delivery.rstuf_delivery
        if delivery is not None:  # counted as they happen: a stop mid-delivery loses none
            totals = delivery.totals
            summary.rstuf_sent, summary.rstuf_confirmed = totals.sent, totals.confirmed
            summary.rstuf_not_found = len(totals.not_found)
        summary.elapsed = time.monotonic() - self.started
        if self.ctx.loaded:
            summary.serial_after = self.ctx.state.serial
            summary.pending = self.ctx.pending_count()
            summary.outbox = len(self.ctx.state.outbox)
