"""The RSTUF outbox: delivering what the mirror owes RSTUF, at most once per path at a time.

The outbox itself lives in state.json (`state.Outbox`); this module sends its
changes with `rstuf_client` and follows every task RSTUF accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import rstuf_client
from mirror_store import TUF_HASH_ALGORITHM, MirrorLayout, crash_point, digest_file
from state import OutboxTask, State

log = logging.getLogger("pypi_mirror")

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
        wait: float,
        batch: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.box = state.outbox
        self.layout, self.client, self.save = layout, client, save
        self.wait, self.batch = wait, batch  # seconds for the whole delivery; artifacts a request
        self.clock, self.sleep = clock, sleep
        self.task_states: dict[str, str] = {}
        self.failed_paths: set[str] = set()  # not resent in the run their task failed in
        self.sent_now: set[str] = set()  # ids of the tasks this delivery sent

    def deliver(self) -> DeliveryReport:
        """Poll, send, publish and wait until every task ended or `rstuf_wait` passed."""
        report = DeliveryReport()
        deadline = time.monotonic() + self.wait
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
                f"{self.wait:.0f}s; they are checked again next run"
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
        batch = self.batch
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
