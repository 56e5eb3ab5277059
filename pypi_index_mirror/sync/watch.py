"""--watch: follow PyPI's changelog every few seconds, for as long as the process lives.

Run from a timer, the interval is the floor of staleness: a release uploaded
just after a run waits the whole interval, then the run waits on RSTUF. A
watch process keeps the mirror lock and one `Sync` for its lifetime and loops:

- every `interval`, one *cycle*: PyPI's last serial, the changelog since the
  mirror's, each project it names fetched and written (``Sync.catch_up``, the
  same code a single run uses), the changes put in the durable outbox and sent
  to RSTUF without waiting for RSTUF's tasks; every few minutes a slice of the
  pages is revalidated (``revalidate.WATCH_REVALIDATE_EVERY``);
- between cycles, every ``--rstuf-poll`` seconds, one non-blocking delivery
  pass: RSTUF's tasks polled, a publish posted for those that wait on one,
  what became owed sent. A slow RSTUF therefore never holds back the next
  changelog read, and nothing in flight is lost if the process stops: each
  request is in state.json before it is sent (the outbox), and the next
  process sends what was not confirmed.

Each cycle is recorded like a run (status.json, ``--metrics-file``): the serial
lag, the time the mirror was last in step with PyPI, the outbox, the last
error. A cycle that fails on PyPI (its retries spent, the circuit breaker
tripped, XML-RPC's rate limit) is recorded and the next one waits twice as
long, up to `MAX_BACKOFF`; one RSTUF refuses backs the delivery passes off the
same way. SIGTERM or SIGINT stops the process at once, the state saved (exit
143 or 130); a batch being written is finished first (``RunContext.applying_changes``).

XML-RPC calls: two per cycle at most (``changelog_last_serial``, then
``changelog_since_serial`` only when the serial moved), so at 10 s no more than
720 an hour, a fifth of PyPI's default limit of 3,600 an hour per address,
and paced by ``--xmlrpc-interval`` like every run's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pypi_index_mirror.mirror.safety import CircuitBreaker, check_serial
from pypi_index_mirror.mirror.store import mirror_lock
from pypi_index_mirror.ops.cli import Stopped, format_duration
from pypi_index_mirror.sync import revalidate
from pypi_index_mirror.sync.context import summary_log
from pypi_index_mirror.sync.run import Sync
from pypi_index_mirror.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0  # seconds: the longest wait between two cycles after failures
# Pages one cycle revalidates at most: after a long pause a whole period's worth is due,
# which must not hold the changelog back for long (700,000 pages take minutes).
REVALIDATE_PER_CYCLE = 5000


@dataclass
class Pace:
    """When the next cycle and the next delivery pass are due, with backoff after failures."""

    interval: float  # seconds between cycles when all is well
    poll: float  # seconds between delivery passes when all is well
    cycle_failures: int = 0
    delivery_failures: int = 0

    def cycle_wait(self) -> float:
        return min(MAX_BACKOFF, self.interval * 2.0**self.cycle_failures)

    def delivery_wait(self) -> float:
        return min(MAX_BACKOFF, self.poll * 2.0**self.delivery_failures)


class Watch:
    """One Sync followed for the life of the process (see the module docstring).

    `cycles` stops it after that many cycles (tests and benchmarks); `clock`
    and `sleep` are injectable. `sleep` must let a signal's `Stopped` through.
    """

    def __init__(
        self,
        sync: Sync,
        interval: float,
        cycles: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sync = sync
        self.pace = Pace(interval, max(0.05, sync.ctx.config.rstuf_poll))
        self.cycles = cycles
        self.clock, self.sleep = clock, sleep
        self.done = 0  # cycles run

    def run(self) -> int:
        """Follow PyPI until stopped; raises Stopped (the state saved) or a ToolError that
        no later cycle can get past (a refusal: a foreign mirror, a serial gone back)."""
        sync = self.sync
        sync.ctx.summary.started = True
        try:
            self.follow()
        except Stopped as stop:
            if stop.note:
                raise
            raise Stopped(stop.signum, sync.save_after_stop()) from None
        finally:
            sync.settle_summary()
        return sync.exit_code()

    def follow(self) -> None:
        sync = self.sync
        if not sync.ctx.layout.root.exists():
            sync.find_state(move=False)  # nothing to move yet: a state in the served tree?
            sync.check_identity()  # before the lock, which would create the directory
        with mirror_lock(sync.ctx.layout.lock_path):
            log.info(
                "watching PyPI: the changelog every %s, RSTUF polled every %s",
                format_duration(self.pace.interval),
                format_duration(self.pace.poll),
            )
            try:
                while self.cycles is None or self.done < self.cycles:
                    started = self.clock()
                    self.cycle()
                    self.done += 1
                    if self.cycles is not None and self.done >= self.cycles:
                        break
                    self.between_cycles(started + self.pace.cycle_wait())
            except Stopped as stop:  # saved inside the lock
                raise Stopped(stop.signum, sync.save_after_stop()) from None

    def cycle(self) -> None:
        """One changelog read, applied and handed to RSTUF, recorded like a run."""
        sync = self.sync
        summary = sync.ctx.summary
        vars(summary).update(vars(type(summary)()))  # the same object main() reports
        summary.started = True
        sync.ctx.pypi.requests_made = 0  # each cycle's record counts its own
        if sync.ctx.loaded:
            summary.serial_before = sync.ctx.state.serial
        sync.started = time.monotonic()  # the summary's elapsed, as a run's
        sync.ctx.breaker = CircuitBreaker(sync.ctx.config.failure_limit)
        sync.ctx.halt.clear()
        sync.delivery.next_round()
        try:
            with sync.recording():
                last_serial = self.last_serial()
                now = time.time()
                cursor, period = sync.ctx.state.revalidation, sync.ctx.config.revalidate_period
                due = revalidate.due(cursor, now, period, revalidate.WATCH_REVALIDATE_EVERY)
                sync.revalidate_limit = REVALIDATE_PER_CYCLE
                sync.catch_up(last_serial, wait=False, revalidating=due)
                if sync.ctx.rstuf is None:  # no RSTUF URL: says so, as a run's end does
                    sync.delivery.deliver_outbox(wait=True)
        except UpstreamError as exc:  # recorded as the cycle's error; the next one retries
            self.pace.cycle_failures += 1
            log.warning(
                "%s; the next cycle in %s",
                exc,
                format_duration(round(self.pace.cycle_wait())),
            )
            return
        tripped = sync.ctx.halt.reason is not None
        self.pace.cycle_failures = self.pace.cycle_failures + 1 if tripped else 0
        self.note_delivery(any(p.startswith("RSTUF:") for p in summary.problems))
        if summary.added or summary.updated or summary.removed or summary.problems:
            summary_log.info("%s", summary.line())
        for problem in dict.fromkeys(summary.problems):
            log.warning("%s", problem)

    def last_serial(self) -> int | None:
        """PyPI's last serial (None: following the JSON root); the first cycle also reads
        and checks the state and the mirror, as a single run does."""
        sync = self.sync
        if sync.ctx.identity is None:  # also after a first cycle that failed before it got there
            return sync.start()
        serial = sync.source.xmlrpc_last_serial()
        if serial is not None:
            check_serial(sync.ctx.state.serial, serial, sync.ctx.upstream, sync.ctx.state_file)
        return serial

    def between_cycles(self, next_cycle: float) -> None:
        """Wait for the next cycle, making a delivery pass whenever one is due."""
        problems = self.sync.ctx.summary.problems
        while True:
            now = self.clock()
            if now >= next_cycle:
                return
            self.sleep(min(next_cycle, now + self.pace.delivery_wait()) - now)
            if self.clock() >= next_cycle:
                return
            if self.owes_delivery():
                before = len(problems)
                self.sync.delivery.deliver_outbox(wait=False)
                self.note_delivery(failed=len(problems) > before)
                del problems[before + 1 :]  # one line a pass: the cycle's record stays small
                wait = format_duration(round(self.pace.delivery_wait()))
                for problem in problems[before:]:
                    log.warning("%s; the next delivery pass in %s", problem, wait)

    def owes_delivery(self) -> bool:
        """Whether a pass has anything to do now (unanswered requests settle in the cycles:
        an hour's wait, not worth a pass every few seconds)."""
        box = self.sync.ctx.state.outbox
        return bool(box.dirty or box.tasks or box.publishes)

    def note_delivery(self, failed: bool) -> None:
        """Back the delivery passes off while RSTUF refuses or fails."""
        self.pace.delivery_failures = self.pace.delivery_failures + 1 if failed else 0
