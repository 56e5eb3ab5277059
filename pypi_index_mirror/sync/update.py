"""An update: what changed since ``state.serial``, from the changelog or the JSON root.

`Update` applies a changed project filter (removing what it now excludes,
listing what it now admits), collects the projects to fetch (the changelog's,
or the JSON root's serials newer than the mirror's, and those still pending),
prints the plan on ``--dry-run``, and otherwise fetches and applies them
(`Refresher`), merges the roots (`Roots`) and moves the serial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from pypi_index_mirror.mirror.filters import ProjectFilter
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.sync import dry_run
from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.refresh import Refresher
from pypi_index_mirror.sync.roots import Roots
from pypi_index_mirror.sync.source import XMLRPC_SOURCE, Source
from pypi_index_mirror.upstream.changelog import (
    Listing,
    identity_changes,
    merge_pending,
    projects_to_refresh,
)
from pypi_index_mirror.upstream.errors import XmlRpcUnavailable

log = logging.getLogger(__name__)


class Update:
    """Updates from the changelog or the JSON root (see the module docstring)."""

    def __init__(self, ctx: RunContext, source: Source, refresher: Refresher, roots: Roots) -> None:
        self.ctx = ctx
        self.source = source
        self.refresher = refresher
        self.roots = roots

    def update(self, last_serial: int | None) -> None:
        """Apply what changed since ``state.serial``: from the changelog, or the JSON root.

        `last_serial` is PyPI's ``changelog_last_serial`` (None: XML-RPC is not used).
        """
        widened_from = self.apply_filter_change()
        if self.source.kind == XMLRPC_SOURCE and last_serial is not None:
            try:
                self.update_from_changelog(widened_from, last_serial)
                return
            except XmlRpcUnavailable as exc:  # raised before anything was fetched
                self.source.fall_back(exc)
        self.update_from_listing(widened_from)

    def update_from_changelog(self, widened_from: ProjectFilter | None, last_serial: int) -> None:
        """Apply the changelog since ``state.serial``: fetch each mentioned project once."""
        since = self.ctx.state.serial
        assert since is not None
        self.source.note_source()
        to_fetch: dict[str, PendingProject] = {}
        newest = since
        identity_changed: set[str] = set()  # renamed, created or removed: see identity_changes
        membership_hint = False  # for a dry run: the root index may change
        for entries in self.ctx.pypi.changelog_since(since, last_serial):
            for name, item in projects_to_refresh(entries).items():
                if self.ctx.filter.allows(name):
                    merge_pending(to_fetch, name, item)
            identity_changed |= identity_changes(entries)
            membership_hint |= any("quarantine" in entry.action for entry in entries)
            newest = entries[-1].serial
        if widened_from is not None:  # the filter admits more now: fetch just those
            listing, _ = self.source.fetch_listing()
            for name in listing:
                if not widened_from.allows(name):
                    merge_pending(to_fetch, name, listing[name])
        for name, item in self.ctx.state.pending.items():
            merge_pending(to_fetch, name, item)
        quiet = self.ctx.config.watch and not to_fetch  # a --watch cycle with nothing new
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "changelog %d->%d: %d projects to refresh",
            since,
            newest,
            len(to_fetch),
        )
        if self.ctx.config.dry_run:
            root = bool(identity_changed) or membership_hint
            self.plan_update(since, newest, to_fetch, root)
            return
        with self.ctx.applying_changes():
            outcome = self.refresher.refresh(to_fetch, record_changes=True, keep_unfetched=True)
            self.roots.finish_update(to_fetch, outcome, identity_changed)
            self.ctx.state.serial = newest  # what was not fetched is pending with its serial

    def plan_update(
        self, since: int, newest: int, to_fetch: Mapping[str, PendingProject], root: bool
    ) -> None:
        """A dry run's update: print what would be fetched and sent, fetching no page."""
        self.ctx.summary.would_fetch = len(to_fetch)
        outbox = dry_run.outbox_actions(self.ctx.owed_for_plan(), self.ctx.target_exists)
        root = root or self.ctx.state.root_stale
        for line in dry_run.update_plan(since, newest, to_fetch, outbox, root, self.ctx.forms):
            self.ctx.out(line)

    def update_from_listing(self, widened_from: ProjectFilter | None) -> None:
        """Without XML-RPC: fetch every project whose listed serial passed ``state.serial``.

        The mirror holds every project at ``state.serial`` or newer (failures
        wait in ``pending``), so a listed ``_last-serial`` above it is exactly
        a change since: no per-project record is needed. A project the mirror
        lists that the JSON root no longer does is fetched once and its page
        decides (404: removed; quarantined: page kept, unlisted). PyPI's CDN
        caches the root up to 30 minutes, so changes can show that late.
        """
        since = self.ctx.state.serial
        assert since is not None
        listing, root_serial = self.source.fetch_listing()
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
        self.source.check_listing(len(listing), held, root_serial)
        for name, item in self.ctx.state.pending.items():
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
        if self.ctx.config.dry_run:
            self.plan_update(since, root_serial, to_fetch, bool(renamed or unlisted))
            return
        with self.ctx.applying_changes():
            outcome = self.refresher.refresh(to_fetch, record_changes=True, keep_unfetched=True)
            self.roots.finish_update(to_fetch, outcome, renamed)
            self.ctx.state.serial = max(since, root_serial)  # what was not fetched is pending

    def root_members_in(self, listing: Listing) -> Iterator[tuple[str, str, PendingProject | None]]:
        """(normalized, display, the listing's entry or None) of every project the root lists.

        Both are sorted by normalized name: one walk through each, not a
        lookup per project (700,000 of them); a member out of order (a root
        damaged by hand) is looked up.
        """
        entries = iter(listing.items())
        entry = next(entries, None)
        previous = ""
        for name, display in self.ctx.iter_root_members():
            if name < previous:
                yield name, display, listing.get(name)
                continue
            previous = name
            while entry is not None and entry[0] < name:
                entry = next(entries, None)
            yield name, display, entry[1] if entry is not None and entry[0] == name else None

    def apply_filter_change(self) -> ProjectFilter | None:
        """Bring the mirror in line with --include/--exclude if they changed since the last run.

        Projects now excluded are removed (pages, roots, RSTUF) at once, found
        by one directory scan. Returns the filter the mirror followed before
        when the new one may admit projects it did not (their names come from
        a listing), else None.
        """
        before = self.ctx.state.filters
        if before == self.ctx.filter:
            return None
        log.info("project filter: %s (was: %s)", self.ctx.filter.describe(), before.describe())
        if not before.admits_only_part_of(self.ctx.filter):
            excluded = {
                n for n in self.ctx.writer.local_projects() if not self.ctx.filter.allows(n)
            }
            log.info("%d mirrored projects are now excluded: removing them", len(excluded))
            self.refresher.remove_projects(excluded, record_changes=True)
        return None if self.ctx.filter.admits_only_part_of(before) else before
