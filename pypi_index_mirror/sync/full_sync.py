"""The first sync and ``--full-check``: PyPI's whole listing held against the mirror.

`FullSync` reads the listing (`Source`), decides what to fetch from the pages
on disk (``sync.plan.full_sync_fetches``), fetches and applies it
(`Refresher`), removes what the filter excludes and the forms no longer
mirrored, then writes the roots whole (`Roots`) and moves the serial only when
every listed page is on disk or known gone. A first sync into an empty mirror
is refused while RSTUF already signs pages of it.
"""

from __future__ import annotations

import functools
import logging

from pypi_index_mirror.mirror.formats import ALL_FORMATS
from pypi_index_mirror.mirror.safety import MirrorMismatch
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import ROOT_TARGET
from pypi_index_mirror.mirror.writer import Change
from pypi_index_mirror.sync import dry_run
from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.plan import full_sync_fetches
from pypi_index_mirror.sync.refresh import Refreshed, Refresher
from pypi_index_mirror.sync.roots import Roots
from pypi_index_mirror.sync.source import Source
from pypi_index_mirror.upstream.changelog import Listing

log = logging.getLogger(__name__)


class FullSync:
    """The first sync and --full-check (see the module docstring)."""

    def __init__(self, ctx: RunContext, source: Source, refresher: Refresher, roots: Roots) -> None:
        self.ctx = ctx
        self.source = source
        self.refresher = refresher
        self.roots = roots

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
        starting = not self.ctx.state.full_sync_in_progress
        # --full-check into an empty mirror registers every page with RSTUF (the way out
        # when RSTUF signs pages already); a first sync leaves them to the bootstrap CSV
        first = starting and self.ctx.state.serial is None and not self.ctx.config.full_check
        first = first and not (
            self.ctx.writer.target_exists(ROOT_TARGET) or self.ctx.writer.any_project()
        )
        if first:
            self.refuse_first_sync_under_signed_pages()
        wanted, last_serial = self.source.fetch_listing(last_serial)
        target = min(last_serial, wanted.max_serial(default=last_serial))
        excluded: set[str] = set()  # on disk, and the filter excludes them now
        serials: dict[str, int] = {}  # page serials newer than the listing's, for the JSON root
        # --full-check: archiving leaves the serial as it was, so every listed page is fetched
        on_disk = (
            None if self.ctx.config.full_check else functools.partial(self.on_disk_serial, serials)
        )
        to_fetch = full_sync_fetches(
            wanted, self.ctx.allowed_local(excluded), on_disk, self.ctx.state.pending
        )
        self.source.check_listing(len(wanted), to_fetch.local_seen, last_serial)
        if starting:
            self.ctx.state.first_sync = first
            self.ctx.state.full_sync_in_progress = True
            self.ctx.save("full-sync-started")
        first = self.ctx.state.first_sync
        kind = "first sync" if first else "full check"
        log.info("%s: %d projects listed at serial %d", kind, len(wanted), target)
        if self.ctx.config.dry_run:
            self.ctx.summary.would_fetch = len(to_fetch)
            outbox = dry_run.outbox_actions(self.ctx.owed_for_plan(), self.ctx.target_exists)
            plan = dry_run.full_sync_plan(
                kind.replace(" ", "-"), len(to_fetch), len(wanted), target, outbox
            )
            for line in plan:
                self.ctx.out(line)
            return
        self.ctx.summary.unchanged += to_fetch.excluded
        with self.ctx.applying_changes():
            outcome = self.refresher.refresh(
                to_fetch,
                record_changes=not first,
                keep_unfetched=False,
                nothing_on_disk=to_fetch.local_seen == 0 and not excluded,
            )
            self.refresher.remove_projects(excluded, record_changes=not first)
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
        config = self.ctx.config
        if config.tuf_metadata_url is None or not self.ctx.owes_rstuf:
            return
        # only here: python-tuf is 20 MiB to load
        from pypi_index_mirror.audit import metadata as tuf_metadata

        way_out = (
            "run with --full-check instead: it fetches every page and registers each with "
            "RSTUF (or restore the mirror and its state.json from a backup)"
        )
        settings_ = tuf_metadata.audit_settings(config)
        try:
            signed = [
                form.root_target
                for form in ALL_FORMATS
                if tuf_metadata.signed_target(settings_, form.root_target) is not None
            ]
        except tuf_metadata.AuditError as exc:
            raise MirrorMismatch(
                f"cannot check whether RSTUF already signs pages before a first sync into "
                f"{self.ctx.layout.root.absolute()} ({exc}): fix --tuf-metadata-url or --tuf-root; "
                f"if RSTUF does sign this mirror's pages, {way_out}"
            ) from None
        if signed:
            raise MirrorMismatch(
                f"RSTUF's TUF metadata at {config.tuf_metadata_url} signs {signed[0]} already, "
                f"but {self.ctx.layout.root.absolute()} holds no mirror (lost? another disk?): a "
                "first sync would register nothing and leave RSTUF signing the old pages; "
                f"{way_out}"
            )

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
        outcome.unlisted |= self.ctx.quarantined_on_disk  # current, not fetched, quarantined
        for name in outcome.failed:  # listed with the serial of the page still served
            if self.ctx.writer.has_page(name):
                serials[name] = self.ctx.writer.local_serial(name, self.ctx.forms[0].basename) or 0
        has_page = self.ctx.writer.has_page
        if outcome.unfetched:  # stopped early: the pages on disk now say who is listed

            def listed(name: str) -> bool:
                return name not in outcome.unlisted and has_page(name)
        else:
            unsure = outcome.failed | outcome.unfetched_names

            def listed(name: str) -> bool:
                return outcome.lists(name, if_failed=name in unsure and has_page(name))

        if done or self.ctx.writer.any_project():  # never an empty root for a failed sync
            self.roots.write_roots(
                lambda: (
                    (name, item.display_name, serials.get(name, item.serial))
                    for name, item in wanted.items()
                    if listed(name)
                ),
                record_change=not first,
            )
        if not done:
            still = self.ctx.pending_count()
            what = "first sync" if first else "full check"
            self.ctx.summary.problems.append(
                f"the {what} is not finished: {still} project(s) still to fetch; "
                "the next run goes on with it"
            )
            return
        serial, identity = self.ctx.state.serial, self.ctx.identity
        moved = identity is not None and identity.upstream_changed  # another upstream's serial
        self.ctx.state.serial = target if serial is None or moved else max(serial, target)
        self.ctx.state.formats = self.ctx.form_words
        self.ctx.state.full_sync_in_progress = False
        self.ctx.state.first_sync = False

    def on_disk_serial(
        self, serials: dict[str, int], name: str, listed: PendingProject
    ) -> int | None:
        """The serial of a listed project's pages on disk; None unless every form is there.

        Read from the page itself (the first form's trailer or JSON ``meta``),
        never from a per-project record; one newer than the listing is noted in
        `serials` for the JSON root (such a project is current).
        """
        primary, *others = self.ctx.forms
        serial = self.ctx.writer.local_serial(name, primary.basename)
        if serial is None:
            return None
        if any(not self.ctx.writer.has_page(name, form.basename) for form in others):
            return None
        if serial > listed.serial:
            serials[name] = serial
        if serial >= listed.serial and self.ctx.writer.quarantined(name, primary.basename):
            # current, so not fetched: its page, not PyPI's listing (which names
            # quarantined projects too), says it leaves the roots
            self.ctx.quarantined_on_disk.add(name)
        return serial

    def drop_other_forms(self, record_changes: bool) -> None:
        """Remove the pages and root of forms no longer mirrored (after a --simple-format change).

        Only when the state says such pages were made, or on --full-check
        (which also clears strays): otherwise the mirror cannot hold any. The
        mirror's directories are streamed once more, not kept from before.
        """
        dropped = [form for form in ALL_FORMATS if form not in self.ctx.forms]
        if not dropped or not (
            set(self.ctx.state.formats) - set(self.ctx.form_words) or self.ctx.config.full_check
        ):
            return
        batch: list[list[Change]] = []
        for name in self.ctx.allowed_local():
            group = self.refresher.removals(name, dropped)
            if group:
                batch.append(group)
            if len(batch) >= self.refresher.BATCH:
                self.refresher.apply_batch(batch, record_changes, count=False)
                batch = []
        self.refresher.apply_batch(batch, record_changes, count=False)
        for form in dropped:
            self.roots.remove_root(form, record_changes)
