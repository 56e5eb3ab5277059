"""The RSTUF outbox: delivering what the mirror owes RSTUF, and following every task it starts.

The outbox itself lives in state.json (`state.Outbox`); this module sends its
changes with `RstufClient`, publishes them, and polls every task it started,
publishes included, until it succeeded or failed in a way acted on.

Why it cannot stall, whatever order RSTUF starts tasks in (repository-service-
tuf-worker 1.0, ``repository.py`` and ``supervisor.conf``):

- Every add/delete goes with ``publish_artifacts: false``, in requests of up to
  `batch` paths. The worker runs one process per core; a task writes its rows,
  shows RUNNING, and then holds its process until a publish that *started after*
  those rows were written covers them. Tasks beyond the processes wait PENDING.
- A publish covers every row written before it started, so one posted after a
  task was seen RUNNING always covers it. Each poll round therefore publishes
  when some task is RUNNING that no publish posted since covers; again when that
  publish failed (retried in the same run, up to `MAX_PUBLISH_FAILURES`); and
  again when a task it covered is still RUNNING `CONFIRM_POLLS` polls after it
  succeeded, or when it has not finished after `PUBLISH_POLLS` polls. Every task
  holding a process is published within about one poll interval of showing
  RUNNING, frees its process, and the next ones start.
- Processes can also be held by tasks the mirror cannot poll (a request whose
  answer was lost, another client's): when our tasks have sat PENDING, none of
  them moving, for `STALL_POLLS` polls, a publish frees those too.
- Publish tasks are kept in the outbox and polled to their end, in this run or
  the next. Waiting is bounded by one `WaitBudget` for the whole run.

A request whose answer may be lost (read timeout, connection cut after
sending, a proxy's 5xx) may have started a task whose id never arrived, and
its retry starts another. Both carry the same final states, so the duplicate
writes the same rows, and it cannot hold a process for long (above). To keep
it tracked all the same, each request is recorded in ``outbox.uncertain``
before it is sent and moved to ``outbox.tasks`` once RSTUF answered with its
task id; every attempt that may have reached RSTUF unanswered leaves its own
entry, as does a run killed before it saved the answer. An uncertain entry
keeps the page copies it names on disk and, after `UNCERTAIN_SETTLE`, its paths
are sent once more so that RSTUF ends on the mirror's final state even if the
duplicate ran late.

A delete RSTUF answers with ``not_found_artifacts`` succeeded all the same; when
the mirror had recorded that RSTUF signed that path, and no request that may
have run unseen could have deleted it first, RSTUF's database and the mirror
were apart, and `DeliveryTotals.not_found` says so for the run's report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pypi_index_mirror.mirror.state import OutboxTask, PublishTask, State
from pypi_index_mirror.mirror.store import (
    TUF_HASH_ALGORITHM,
    FileDigest,
    MirrorLayout,
    crash_point,
    digest_file,
)
from pypi_index_mirror.rstuf.artifacts import Artifact
from pypi_index_mirror.rstuf.errors import RstufError, RstufMisconfigured, TaskFailed
from pypi_index_mirror.rstuf.tasks import SUCCESS_STATE, not_found_artifacts, task_failure

if TYPE_CHECKING:  # handed in; requests loads only when a run has an RSTUF client
    from pypi_index_mirror.rstuf.client import RstufClient

log = logging.getLogger(__name__)

# States in which an add/delete is taking up a worker process.
_MOVING_STATES = frozenset({"RECEIVED", "STARTED", "PRE_RUN", "RUNNING", "RETRY"})


@dataclass
class WaitBudget:
    """The seconds one run may spend on RSTUF, shared by all its deliveries."""

    seconds: float
    spent: float = 0.0

    @property
    def left(self) -> float:
        return max(0.0, self.seconds - self.spent)


@dataclass
class DeliveryReport:
    sent: int = 0  # artifacts sent (added or removed)
    # (target, digest RSTUF signed until it confirmed a newer state; None: not recorded)
    superseded: list[tuple[str, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # RSTUF refused as misconfigured (401, 403, not an RSTUF URL): no use trying again
    # in this run; the changes stay in the outbox
    misconfigured: RstufMisconfigured | None = None


@dataclass
class DeliveryTotals:
    """What the deliveries of one run did so far, kept as it happens (a signal loses none)."""

    sent: int = 0  # artifacts sent (added or removed)
    confirmed: int = 0  # paths RSTUF confirmed (their task succeeded), whichever run sent them
    # deleted paths RSTUF answered with `not_found_artifacts` although the mirror had
    # recorded that RSTUF signed them: RSTUF's database and the mirror were apart
    not_found: list[str] = field(default_factory=list)


class RstufDelivery:
    """Delivers ``state.outbox`` to RSTUF, at most once per path at a time; one per run.

    A path is sent as its final state on disk (present: add with its length and
    hash; absent: remove). A path already in an unfinished task waits until that
    task ends, so RSTUF never sees an older state after a newer one. Each request
    is saved in state.json before it is sent and again with its task id.

    What it learns of RSTUF's tasks lives for the run, across `deliver` calls;
    `clock` (epoch, for state.json), `monotonic` and `sleep` are injectable.
    """

    TASK_EXPIRY = 6 * 3600.0  # an unknown task id stays PENDING for ever: resend after this
    UNCERTAIN_SETTLE = 3600.0  # seconds after which an unanswered request has surely run
    CONFIRM_POLLS = 5  # polls a covered task may stay RUNNING after its publish succeeded
    PUBLISH_POLLS = 30  # polls a publish may stay unfinished before another is posted
    STALL_POLLS = 5  # polls our tasks may sit PENDING, none moving, before a publish frees them
    MAX_PUBLISH_FAILURES = 3  # failed publishes in one run before giving up until the next
    MAX_OPEN_PUBLISHES = 3  # unfinished publishes followed at once (RSTUF's jobs worker down)

    def __init__(
        self,
        state: State,
        layout: MirrorLayout,
        client: RstufClient,
        save: Callable[[], None],
        batch: int,
        budget: WaitBudget,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        read_target: Callable[[str], FileDigest] | None = None,
    ) -> None:
        self.box = state.outbox
        # a target's bytes as served now (FileNotFoundError: gone); a bucket's, with --storage
        self.read_target = read_target or (lambda path: digest_file(layout.path_of_target(path)))
        self.layout, self.client, self.save = layout, client, save
        self.batch, self.budget = batch, budget
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.states: dict[str, str] = {}  # last state seen, by task id
        self.covered_by: dict[str, str] = {}  # change task -> publish posted after it ran
        self.publish_posted: dict[str, float] = {}  # publish -> when posted (monotonic)
        self.publish_done: dict[str, float] = {}  # publish -> when seen SUCCESS (monotonic)
        self.last_publish = -math.inf  # monotonic
        self.last_progress = monotonic()  # when one of our tasks was last seen moving
        self.publish_failures = 0
        self.failed_paths: set[str] = set()  # not resent in the run their task failed in
        self.totals = DeliveryTotals()  # over every `deliver` of the run
        # paths an unanswered or failed request may have changed at RSTUF unseen, also
        # once their records settled in this run: a delete of one may find nothing there
        self.maybe_changed: set[str] = set()

    @property
    def poll_interval(self) -> float:
        return self.client.poll_interval

    def next_round(self) -> None:
        """A --watch process's next cycle counts as a new run: paths whose task failed are
        sent again, publishing resumes after failures, and what was learnt of tasks no
        longer followed is dropped, so a process running for weeks holds no more than a
        run does."""
        self.failed_paths.clear()
        self.publish_failures = 0
        followed = {task.task_id for task in self.box.tasks}
        publishes = {publish.task_id for publish in self.box.publishes}
        self.covered_by = {t: p for t, p in self.covered_by.items() if t in followed}
        recent = publishes | set(self.covered_by.values())
        self.publish_posted = {p: t for p, t in self.publish_posted.items() if p in recent}
        self.publish_done = {p: t for p, t in self.publish_done.items() if p in recent}
        self.states = {t: s for t, s in self.states.items() if t in followed | publishes}

    # --- one delivery

    def deliver(self, wait: bool) -> DeliveryReport:
        """Poll, send and publish; with `wait`, repeat every poll interval until all ended.

        Without `wait` it makes one pass (the start of a run: old tasks get their
        publish while the mirror updates). Either way the time spent comes out
        of the run's budget; what is left unfinished is followed up next run.
        """
        report = DeliveryReport()
        started = self.monotonic()
        try:
            self.maybe_changed.update(path for entry in self.box.uncertain for path in entry.paths)
            self._settle_uncertain()
            while True:
                self._poll(report)
                self._send(report)
                self._publish_if_needed(report)
                left = self.budget.left - (self.monotonic() - started)
                if not wait or not self._following() or left <= 0:
                    break
                self.sleep(min(self.poll_interval, left))
        except RstufMisconfigured as exc:
            report.misconfigured = exc
        except RstufError as exc:
            report.errors.append(str(exc))
        finally:
            self.budget.spent += self.monotonic() - started
        if wait and not report.errors and report.misconfigured is None:
            self._report_unfinished(report)
        return report

    def _following(self) -> bool:
        """Whether waiting longer can still get something done in this run."""
        if self.publish_failures >= self.MAX_PUBLISH_FAILURES and not self.box.publishes:
            return False
        return bool(self.box.tasks or self.box.publishes or self._ready())

    def _report_unfinished(self, report: DeliveryReport) -> None:
        unfinished = [*self.box.tasks, *self.box.publishes]
        if unfinished:
            states: dict[str, int] = {}
            for task in unfinished:
                state = self.states.get(task.task_id, "unpolled")
                states[state] = states.get(state, 0) + 1
            seen = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
            report.errors.append(
                f"{len(unfinished)} RSTUF task(s) not finished when the run's RSTUF budget "
                f"(--rstuf-wait {self.budget.seconds:g}s) ran out ({seen}); they are followed "
                "up next run"
            )
        elif self.box.dirty:
            report.errors.append(f"{len(self.box.dirty)} change(s) not sent to RSTUF")

    # --- polling

    def _poll(self, report: DeliveryReport) -> None:
        now = self.monotonic()
        changed = False
        for task in list(self.box.tasks):
            changed |= self._poll_change(task, report, now)
        for publish in list(self.box.publishes):
            changed |= self._poll_publish(publish, report, now)
        if changed:
            self.save()

    def _observe(self, task_id: str, state: str, now: float) -> None:
        if state in _MOVING_STATES or self.states.get(task_id, state) != state:
            self.last_progress = now
        self.states[task_id] = state

    def _poll_change(self, task: OutboxTask, report: DeliveryReport, now: float) -> bool:
        result = self.client.task(task.task_id)
        self._observe(task.task_id, result.state, now)
        failure = task_failure(result)
        if failure is not None:
            report.errors.append(str(TaskFailed(task.task_id, result.state, failure)))
            self.failed_paths.update(task.paths)
            self._requeue(task)
        elif result.state == SUCCESS_STATE:
            self.box.tasks.remove(task)
            not_found = set()
            if task.action == "remove":
                not_found = set(not_found_artifacts(result))
                # a request that may have run unseen (lost answer, a failed or expired
                # task sent again) may have deleted it already: no surprise either
                self.maybe_changed.update(p for entry in self.box.uncertain for p in entry.paths)
                not_found -= self.maybe_changed
            for path in task.paths:
                before = self.box.confirm(path, task.digests.get(path))
                report.superseded.append((path, before))
                # "": the mirror knew RSTUF held nothing there (a page added and removed
                # before RSTUF heard of it): nothing to report
                if path in not_found and before != "":
                    self.totals.not_found.append(path)
            self.totals.confirmed += len(task.paths)
        elif self.clock() - task.sent_at > self.TASK_EXPIRY:
            log.warning(
                "RSTUF task %s still %s after %.0fs; sending its changes again",
                task.task_id,
                result.state,
                self.TASK_EXPIRY,
            )
            self._requeue(task)
        else:
            return False
        return True

    def _requeue(self, task: OutboxTask) -> None:
        """Send `task`'s paths again; until its record settles, what it sent stays on disk.

        A task that failed may still have written rows that a later publish
        publishes, so its page copies are kept like those of an unanswered request.
        """
        self.box.tasks.remove(task)
        self.box.uncertain.append(
            OutboxTask(task.task_id, task.action, task.paths, self.clock(), task.digests)
        )
        self.box.dirty.update(task.paths)

    def _poll_publish(self, publish: PublishTask, report: DeliveryReport, now: float) -> bool:
        result = self.client.task(publish.task_id)
        self.states[publish.task_id] = result.state
        failure = task_failure(result)
        if failure is not None:
            self.publish_failures += 1
            again = self.publish_failures < self.MAX_PUBLISH_FAILURES
            log.warning(
                "RSTUF publish %s ended %s: %s; %s",
                publish.task_id,
                result.state,
                failure,
                "publishing again" if again else "no more publishes this run",
            )
            if not again:
                report.errors.append(
                    f"{self.publish_failures} RSTUF publishes failed in this run, the last "
                    f"{result.state}: {failure}; check the RSTUF worker logs (its tasks are "
                    "published next run)"
                )
        elif result.state == SUCCESS_STATE:
            self.publish_done[publish.task_id] = now
            self._supersede_before(publish)
        elif self.clock() - publish.sent_at <= self.TASK_EXPIRY:
            return False
        self.box.publishes.remove(publish)
        return True

    def _supersede_before(self, publish: PublishTask) -> None:
        """Publishes posted before one that succeeded are done with: it covered all they would.

        (A publish covers every row written before it started, and it started
        after they were posted.) So one that RSTUF lost does not hold the run.
        """
        index = self.box.publishes.index(publish)
        for earlier in self.box.publishes[:index]:
            log.info("RSTUF publish %s is superseded by %s", earlier.task_id, publish.task_id)
        del self.box.publishes[:index]

    # --- publishing

    def _publish_if_needed(self, report: DeliveryReport) -> None:
        if self.publish_failures >= self.MAX_PUBLISH_FAILURES:
            return
        now = self.monotonic()
        running = [
            task.task_id for task in self.box.tasks if self.states.get(task.task_id) == "RUNNING"
        ]
        if any(not self._covered(task_id, now) for task_id in running) or self._stalled(now):
            self._post_publish(running, now)

    def _covered(self, task_id: str, now: float) -> bool:
        """Whether a publish posted after `task_id` was seen RUNNING is running or just ended."""
        publish_id = self.covered_by.get(task_id)
        if publish_id is None:
            return False
        if any(publish.task_id == publish_id for publish in self.box.publishes):
            posted = self.publish_posted[publish_id]
            return now - posted < self.PUBLISH_POLLS * self.poll_interval  # else: stuck
        done = self.publish_done.get(publish_id)
        return done is not None and now - done < self.CONFIRM_POLLS * self.poll_interval

    def _stalled(self, now: float) -> bool:
        """Our tasks wait PENDING and none has moved for a while: processes held by others."""
        patience = self.STALL_POLLS * self.poll_interval
        return (
            any(self.states.get(task.task_id) == "PENDING" for task in self.box.tasks)
            and now - self.last_progress >= patience
            and now - self.last_publish >= patience
        )

    def _post_publish(self, running: Sequence[str], now: float) -> None:
        publish_id = self.client.publish()
        self.box.publishes.append(PublishTask(publish_id, self.clock()))
        # Publishes are cumulative: a newer one covers all an older one would.
        # While RSTUF runs none of them, following the newest few is enough.
        for dropped in self.box.publishes[: -self.MAX_OPEN_PUBLISHES]:
            log.info(
                "RSTUF publish %s still %s: no longer followed",
                dropped.task_id,
                self.states.get(dropped.task_id, "unpolled"),
            )
        del self.box.publishes[: -self.MAX_OPEN_PUBLISHES]
        self.save()
        for task_id in running:
            self.covered_by[task_id] = publish_id
        self.publish_posted[publish_id] = self.last_publish = now

    # --- sending

    def _ready(self) -> list[str]:
        """Owed paths that can go now: not in flight, not failed in this run."""
        return sorted(self.box.dirty - self.box.in_flight_paths() - self.failed_paths)

    def _send(self, report: DeliveryReport) -> None:
        ready = self._ready()
        if not ready:
            return
        adds, removes = self._final_states(ready)
        for start in range(0, len(adds), self.batch):
            self._submit("add", adds[start : start + self.batch], [], report)
        for start in range(0, len(removes), self.batch):
            self._submit("remove", [], removes[start : start + self.batch], report)

    def _final_states(self, paths: list[str]) -> tuple[list[Artifact], list[str]]:
        """Split paths into artifacts to add (hashed from disk now) and paths to remove."""
        adds, removes = [], []
        for path in paths:
            try:
                digest = self.read_target(path)
            except (FileNotFoundError, NotADirectoryError):
                removes.append(path)
                continue
            hashes = {TUF_HASH_ALGORITHM: digest.hexdigest}
            adds.append(Artifact(path, digest.length, hashes))
        return adds, removes

    def _submit(
        self,
        action: str,
        artifacts: list[Artifact],
        removes: list[str],
        report: DeliveryReport,
    ) -> None:
        """One request, recorded before it is sent (uncertain) and once answered (a task)."""
        paths = [artifact.path for artifact in artifacts] if action == "add" else removes
        digests = {a.path: a.hashes[TUF_HASH_ALGORITHM] for a in artifacts}
        intent = OutboxTask("", action, paths, self.clock(), digests)
        self.box.uncertain.append(intent)
        self.save()  # durable before RSTUF can act on it

        def on_uncertain() -> None:
            """An attempt may have started a task unseen: keep it tracked before the retry."""
            entry = OutboxTask("", action, list(paths), self.clock(), dict(digests))
            self.box.uncertain.append(entry)
            self.save()

        try:
            if action == "add":
                task_id = self.client.add(artifacts, publish=False, on_uncertain=on_uncertain)
            else:
                task_id = self.client.remove(removes, publish=False, on_uncertain=on_uncertain)
        except RstufError:
            self._forget(intent)
            self.save()
            raise
        crash_point("rstuf-answered", paths)
        self.last_progress = self.monotonic()  # a new task: give it time to start
        self._forget(intent)
        intent.task_id = task_id
        self.box.tasks.append(intent)
        self.box.dirty.difference_update(paths)
        self.save()
        report.sent += len(paths)
        self.totals.sent += len(paths)

    def _forget(self, entry: OutboxTask) -> None:
        self.box.uncertain = [other for other in self.box.uncertain if other is not entry]

    def _settle_uncertain(self) -> None:
        """Uncertain records old enough to have run: send their paths' final state once more."""
        now = self.clock()
        settled = [e for e in self.box.uncertain if now - e.sent_at >= self.UNCERTAIN_SETTLE]
        if not settled:
            return
        for entry in settled:
            self._forget(entry)
        targets = {path for entry in settled for path in entry.paths}
        self.box.owe({target: self._digest_on_disk(target) for target in targets})
        self.save()

    def _digest_on_disk(self, target: str) -> str | None:
        try:
            return self.read_target(target).hexdigest
        except (FileNotFoundError, NotADirectoryError):
            return None
