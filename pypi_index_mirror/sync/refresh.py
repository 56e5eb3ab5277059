"""Fetching projects and applying their pages: the fetch engine's consumer.

`Refresher.refresh` hands a set of wanted projects to the one fetch engine
(``fetch_loop`` driving ``page_steps``) and consumes what comes back: failures
kept pending, new pages counted (written as they arrived), changed pages
gathered into batches that `apply_batch` records in the outbox (intent first,
one durable state save a batch) and then writes. Removing projects without a
fetch (the filter excludes them) goes through the same batches. Every phase
that changes pages (full sync, update, revalidation, repair) comes through here.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field

from pypi_index_mirror.mirror.formats import ALL_FORMATS, JSON, PageFormat
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import hexdigest_of, project_target
from pypi_index_mirror.mirror.writer import Change
from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.fetch_loop import fetch_each
from pypi_index_mirror.sync.page_steps import Fetched, NotFetched, PageSteps
from pypi_index_mirror.upstream.changelog import merge_pending
from pypi_index_mirror.upstream.pages import FetchedPage

log = logging.getLogger(__name__)


@dataclass
class Refreshed:
    """What `Refresher.refresh` learned beyond the pages it wrote."""

    failed: set[str] = field(default_factory=set)  # kept pending
    unlisted: set[str] = field(default_factory=set)  # fetched: gone or quarantined
    serials: dict[str, int] = field(default_factory=dict)  # page serials unlike the wanted ones

    def serial(self, name: str, item: PendingProject) -> int:
        """The serial of the page fetched for `name` (wanted as `item`)."""
        return self.serials.get(name, item.serial)

    unfetched: int = 0  # fetching stopped before these (circuit breaker, signal)
    unfetched_names: set[str] = field(default_factory=set)  # ... when they are kept pending
    # what the pages written or removed move in the roots (see `Roots.finish_update`)
    pages_changed: bool = False  # a page changed: the JSON root shows every page's serial
    membership_changed: bool = False  # a project joined or left the roots

    def lists(self, name: str, if_failed: bool = True) -> bool:
        """Whether `name` belongs in the root index; `if_failed` when its fetch failed."""
        if name in self.failed or name in self.unfetched_names:
            return if_failed
        return name not in self.unlisted


class Refresher:
    """Fetch projects through the engine and apply their pages in durable batches."""

    BATCH = 1000  # changes recorded in the outbox with one durable state write

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def refresh(
        self,
        wanted: Mapping[str, PendingProject],
        record_changes: bool,
        keep_unfetched: bool = True,
        nothing_on_disk: bool = False,
        conditional: bool = False,
    ) -> Refreshed:
        """Fetch every project in `wanted` once, in every form, and apply what its pages say.

        Returns which projects failed, which were fetched but do not belong in the root
        index (gone, or quarantined), and the page serials that differ from `wanted`'s:
        all small, where a flag per project would be 700,000 entries; and whether any
        page changed, and any project joined or left the roots, for the merge of the
        roots that follows. Failures stay in ``state.pending``, and so, with
        `keep_unfetched` (an update), do the projects that fetching stopped before
        (circuit breaker, signal); a full sync finds those again from the listing. With
        `record_changes`, each batch of changed paths is saved to the outbox before the
        batch touches the disk, so RSTUF hears of every write even if the run dies right
        after it. `nothing_on_disk`: the mirror has no page of any project in `wanted`,
        so none is read back. `conditional` (a revalidation): each GET is conditional on
        the held bytes.
        """
        outcome = Refreshed()
        if not wanted:  # a quiet --watch cycle: no worker threads started for nothing
            return outcome
        settled: set[str] = set()  # pending projects fetched now
        steps = PageSteps(
            self.ctx.pypi,
            self.ctx.writer,
            self.ctx.forms,
            self.ctx.breaker,
            self.ctx.halt,
            record_changes=record_changes,
            read_old=not nothing_on_disk,
            dry_run=self.ctx.config.dry_run,
            revalidating=conditional,
        )
        fetches = self.fetch_all(steps, wanted)
        self.ctx.progress.start(len(wanted), "fetching")
        batch: list[list[Change]] = []
        try:
            for fetched in fetches:
                name, item, result = fetched.name, fetched.item, fetched.pages
                if isinstance(result, NotFetched):  # not done: the progress line says so
                    self.not_fetched(name, item, outcome, keep_unfetched)
                    continue
                self.ctx.progress.advance(failed=isinstance(result, Exception))
                if isinstance(result, Exception):
                    self.keep_pending(name, item, result)
                    outcome.failed.add(name)
                    continue
                if name in self.ctx.state.pending:
                    settled.add(name)
                if result is None:  # new pages, written as they arrived (PageSteps)
                    self.written_at_once(fetched, outcome)
                    continue
                changes = [
                    Change(name, item.display_name, page, old, form.basename)
                    for form, page, old in zip(
                        self.ctx.forms, result.pages, result.olds, strict=True
                    )
                ]
                primary = changes[0]
                if not primary.listed_after():
                    outcome.unlisted.add(name)
                elif primary.page.serial != item.serial:
                    outcome.serials[name] = primary.page.serial or 0
                if not any(change.modifies for change in changes):
                    self.ctx.summary.unchanged += primary.page.body is not None
                    continue
                batch.append(changes)
                outcome.pages_changed = True
                if len(batch) >= self.BATCH:
                    outcome.membership_changed |= self.apply_batch(batch, record_changes)
                    batch = []
        finally:
            fetches.close()  # on an error too: drop the transfers in flight
        outcome.membership_changed |= self.apply_batch(batch, record_changes)
        self.ctx.progress.finish(
            f"stopped, {outcome.unfetched} not fetched" if outcome.unfetched else "done"
        )
        for name in settled:  # only now: an intent save must keep them
            self.ctx.state.pending.pop(name, None)
        if self.ctx.halt.reason is not None:
            self.ctx.summary.problems.append(
                f"{self.ctx.halt.reason}: stopped fetching; {outcome.unfetched} project(s) not "
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
        outcome.membership_changed |= fetched.listed
        outcome.pages_changed = True
        self.ctx.summary.added += 1

    def not_fetched(
        self, name: str, item: PendingProject, outcome: Refreshed, keep_pending: bool
    ) -> None:
        outcome.unfetched += 1
        if keep_pending:
            outcome.unfetched_names.add(name)
            merge_pending(self.ctx.state.pending, name, item)
        elif name not in self.ctx.state.pending:  # a full sync finds it again in the listing
            self.ctx.untracked += 1

    def fetch_all(
        self, steps: PageSteps, wanted: Mapping[str, PendingProject]
    ) -> Generator[Fetched, None, None]:
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
        results = fetch_each(steps, items, self.ctx.config.workers, self.ctx.pypi.page_loop)
        finished = False
        try:
            # not `yield from`: closed early, the halt is set before the engine is closed
            for fetched in results:  # noqa: UP028
                yield fetched
            finished = True
        finally:
            if not finished:  # closed early: an error or a second signal in the consumer
                self.ctx.halt.set("the run is ending")
            results.close()  # type: ignore[attr-defined]

    def keep_pending(self, name: str, item: PendingProject, error: Exception) -> None:
        log.warning("%s; kept pending for the next run", error)
        merge_pending(self.ctx.state.pending, name, item)
        self.ctx.summary.failed += 1

    def apply_batch(
        self, batch: list[list[Change]], record_changes: bool, count: bool = True
    ) -> bool:
        """Apply each project's changed pages (a group per project, its first form first).

        Returns whether a project joined or left the roots (never in a dry run,
        which only prints what it would change). With `record_changes`,
        ``state.root_stale`` also says the roots owe a merge (membership moved,
        or a JSON root is mirrored), durably, before the batch touches the disk.
        """
        if not batch:
            return False
        changes = [change for group in batch for change in group if change.modifies]
        if self.ctx.config.dry_run:
            for change in changes:
                verb = "remove" if change.removes else "write"
                self.ctx.out(f"{verb} {project_target(change.name, change.basename)}")
            return False
        membership = any(group[0].listed_before() != group[0].listed_after() for group in batch)
        retiring = [self.ctx.writer.prepare(change) for change in changes]
        if record_changes and self.ctx.owes_rstuf:
            self.ctx.state.outbox.owe(
                {project_target(c.name, c.basename): c.old and hexdigest_of(c.old) for c in changes}
            )
        if record_changes:
            # the JSON root shows every project's serial: any page change moves it
            self.ctx.state.root_stale |= membership or JSON in self.ctx.forms
        if record_changes or any(retiring):
            self.ctx.save("batch-intent")  # durable before the batch touches the disk
        for change in changes:
            self.ctx.writer.apply(change)
        if count:
            for group in batch:
                self.count(group)
        return membership

    def count(self, group: list[Change]) -> None:
        if group[0].removes:
            self.ctx.summary.removed += 1
        elif all(change.old is None for change in group):
            self.ctx.summary.added += 1
        else:
            self.ctx.summary.updated += 1

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
            self.ctx.state.pending.pop(name, None)

    def removals(self, name: str, forms: Iterable[PageFormat]) -> list[Change]:
        gone = FetchedPage(name, None, None, None)
        changes = []
        for form in forms:
            old = self.ctx.writer.read_page(name, form.basename)
            if old is not None:
                changes.append(Change(name, name, gone, old, form.basename))
        return changes
