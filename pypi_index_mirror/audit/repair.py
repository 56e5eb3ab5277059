"""``--audit`` and ``--audit --repair``: the served tree held against TUF's targets, and fixed.

``audit.tuf`` verifies RSTUF's TUF metadata and lists every difference;
`Audit` runs it under the mirror lock for the command line, and a repair
fixes each difference at its source through the run's own phases: the
project re-fetched from PyPI (`Refresher`), the roots merged or rebuilt from
the listing (`Roots`, `FullSync.on_disk_serial`), each path settled in the
outbox unless RSTUF signs it as it is now, and the outbox delivered. A repair
is a run like a sync (the `Sync`'s lock, identity check and status record).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pypi_index_mirror.audit import compare
from pypi_index_mirror.mirror.formats import ALL_FORMATS
from pypi_index_mirror.mirror.state import PendingProject, clear_state_temps, load_state
from pypi_index_mirror.mirror.store import (
    TUF_HASH_ALGORITHM,
    InvalidProjectName,
    clear_staging,
    digest_file,
    mirror_lock,
    prefixed_name,
    project_dir_name,
    project_target,
    sync_filesystem,
)
from pypi_index_mirror.ops.cli import EXIT_AUDIT_DIFFERS, EXIT_OK, ToolError
from pypi_index_mirror.sync.refresh import Refreshed
from pypi_index_mirror.sync.run import Sync

if TYPE_CHECKING:
    # imported where an audit or the bootstrap check runs: python-tuf and its signers
    # (boto3 among them) were 20 MiB and a third of every run's start-up
    from pypi_index_mirror.audit import tuf as tuf_audit
    from pypi_index_mirror.upstream.changelog import Listing

log = logging.getLogger(__name__)


class Audit:
    """An audit, and its repair, run with a `Sync`'s lifecycle and phases."""

    def __init__(self, sync: Sync) -> None:
        self.sync = sync
        self.ctx = sync.ctx

    def run_audit(self) -> int:
        """``--audit [--repair]``: every difference between the served tree and TUF's targets.

        Prints one ``KIND PATH`` line per difference and the audit's summary
        line on stdout. Holds the mirror lock, so no sync changes pages while
        they are compared; without `repair` nothing is written, not even
        state.json, and the state is only read for the outbox note (a damaged
        one is no reason not to audit). A repair is a run like a sync: state
        and mirror must belong together, it is recorded in status.json and
        ends with the summary line. Raises tuf_metadata.AuditError when the audit
        cannot run.
        """
        self.sync.started = time.monotonic()
        served = self.ctx.layout.served_dir
        if self.ctx.config.storage:
            # opens the bucket: a missing one is refused here
            self.ctx.writer = self.ctx.make_writer()
        elif not served.is_dir():
            raise ToolError(
                f"{served}: no served tree to audit (check --mirror-dir, or run pypi_mirror.py "
                "until its first sync finishes)"
            )
        if not self.ctx.config.repair:
            with mirror_lock(self.ctx.layout.lock_path):
                report = self.audit_tree()
            return EXIT_AUDIT_DIFFERS if report.differences else EXIT_OK
        self.ctx.summary.started = True
        try:
            with mirror_lock(self.ctx.layout.lock_path), self.sync.recording():
                self.sync.find_state(move=True)
                self.sync.record_identity(*self.sync.check_identity())
                differing: dict[str, compare.SignedTarget | None] = {}
                self.audit_tree(lambda d: differing.__setitem__(d.path, d.signed))
                if differing:
                    self.repair(differing)
        finally:
            self.sync.settle_summary()
        for problem in self.ctx.summary.problems:
            log.warning("%s", problem)
        return self.sync.exit_code()

    def audit_tree(
        self, also: Callable[[compare.Difference], None] | None = None
    ) -> tuf_audit.AuditReport:
        """Run the audit under the lock: print each difference (and pass it to `also`)."""
        if not self.ctx.loaded:
            try:
                self.sync.find_state(move=False)
                self.ctx.state = load_state(self.ctx.state_file)
            except ToolError as exc:  # damaged, or two of them: the audit is part of recovery
                log.warning("%s; auditing without it", exc)
        owed = self.ctx.state.outbox.dirty | self.ctx.state.outbox.in_flight_paths()
        owed_found: set[str] = set()
        from pypi_index_mirror.audit import metadata as tuf_metadata  # see TYPE_CHECKING above
        from pypi_index_mirror.audit import tuf as tuf_audit

        def emit(difference: compare.Difference) -> None:
            self.ctx.out(difference.line())
            if difference.path in owed:
                owed_found.add(difference.path)
            if also is not None:
                also(difference)

        listing = None
        if self.ctx.storage is not None:
            from pypi_index_mirror.mirror.storage import audit_listing

            listing = audit_listing(self.ctx.storage)
        report = tuf_audit.audit(
            tuf_metadata.audit_settings(self.ctx.config),
            self.ctx.layout,
            emit,
            environment=self.ctx.pypi.environment,
            listing=listing,
        )
        self.ctx.out(report.line())
        if owed_found:
            log.info(
                "%d of the differing paths are changes the outbox still owes RSTUF; "
                "a run with RSTUF delivers them",
                len(owed_found),
            )
        return report

    def repair(self, differing: Mapping[str, compare.SignedTarget | None]) -> set[str]:
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
        clear_staging(self.ctx.layout.staging_dir)
        clear_state_temps(self.ctx.state_file)
        roots = {form.root_target for form in ALL_FORMATS}
        projects: dict[str, list[str]] = {}
        for path in differing:
            name = project_of_target(path)
            if name is not None:
                projects.setdefault(name, []).append(path)
            elif path not in roots:
                log.warning("%s is not a page this mirror writes: remove it at RSTUF", path)
        excluded = {name for name in projects if not self.ctx.filter.allows(name)}
        log.info("repair: re-fetching %d project(s) from PyPI", len(projects) - len(excluded))
        # serial 0: any page PyPI serves now is current; a 404 means the project is gone
        wanted = {name: PendingProject(name, 0) for name in projects if name not in excluded}
        # a root rebuilt from a stale listing (an empty cache) would drop every project it
        # misses: the listing is checked as a full sync checks it, before anything is written
        listing = self.trusted_listing() if roots & differing.keys() else None
        outcome = self.sync.refresher.refresh(wanted, record_changes=True)
        self.sync.refresher.remove_projects(excluded, record_changes=True)
        for name in sorted(outcome.failed):
            log.warning("repair: %s could not be fetched; nothing of it is sent to RSTUF", name)
        if listing is not None:
            self.rebuild_roots(outcome, listing)
        else:
            # Every project fetched gets its root line from what PyPI served now, as an
            # update does for a project whose identity changed: a repair has no changelog
            # to say which did, and a project removed upstream whose page was gone here
            # already changed no page that would move the roots.
            self.sync.roots.finish_update(self.displayed(wanted), outcome, renamed=set(wanted))
        in_flight = self.ctx.state.outbox.in_flight_paths()
        for path in differing:
            if project_of_target(path) not in outcome.failed:
                self.settle(path, differing[path], in_flight)
        sync_filesystem(self.ctx.layout.root)  # never register bytes a power cut could take back
        self.ctx.save("repaired")
        self.sync.delivery.deliver_outbox(wait=True)
        self.sync.delivery.report_rstuf_surprises()
        return outcome.failed

    def displayed(self, wanted: dict[str, PendingProject]) -> dict[str, PendingProject]:
        """`wanted` with the display names the roots show (a repair does not rename)."""
        names = {}
        for name, display in self.ctx.iter_root_members():
            if name in wanted:
                names[name] = display
        return {
            name: PendingProject(names.get(name, name), item.serial, item.expect_page)
            for name, item in wanted.items()
        }

    def trusted_listing(self) -> Listing:
        """PyPI's listing, refused (UntrustedListing, unless --trust-listing) when empty
        or under half of the projects on disk (the roots, which differ, are not asked)."""
        listing, serial = self.sync.source.fetch_listing()
        held = sum(1 for _ in self.ctx.writer.local_projects())
        self.sync.source.check_listing(len(listing), held, serial)
        return listing

    def rebuild_roots(self, outcome: Refreshed, listing: Listing) -> None:
        """Rewrite every mirrored root from PyPI's `listing`, by a full sync's rule.

        Listed projects with pages on disk, at their pages' serials; the roots
        on disk are not trusted for it.
        """
        serials: dict[str, int] = dict(outcome.serials)
        present = bytearray(len(listing))  # a byte a listed project: it has pages on disk
        for index, (name, item) in enumerate(listing.items()):
            if self.ctx.writer.has_page(name):
                present[index] = 1
                if name not in serials:
                    self.sync.full.on_disk_serial(serials, name, item)
        self.sync.roots.write_roots(
            lambda: (
                (name, item.display_name, serials.get(name, item.serial))
                for index, (name, item) in enumerate(listing.items())
                if present[index]
                and outcome.lists(name)
                and name not in self.ctx.quarantined_on_disk
            ),
            record_change=True,
        )

    def settle(self, path: str, signed: compare.SignedTarget | None, in_flight: set[str]) -> None:
        """Relink `path`'s copy, then queue it for RSTUF unless RSTUF signs it as it is now.

        A path RSTUF already signs byte for byte (a tampered page restored from
        PyPI, a copy relinked) needs nothing sent; a path in an unfinished task
        is queued anyway, since that task will change what RSTUF signs.
        """

        served = os.fspath(self.ctx.layout.served_dir)
        file = self.ctx.layout.path_of_target(path)
        if self.ctx.storage is not None:
            found = self.stored_facts(path, signed)
        else:
            if file.is_file():
                self.ctx.writer.ensure_copy(file.parent, digest_file(file).hexdigest, file.name)
            found = compare.read_disk_facts(served, path, signed)
        in_step = not compare.differences(path, signed, found)
        box = self.ctx.state.outbox
        if in_step and path not in in_flight:
            box.dirty.discard(path)
            box.signed.pop(path, None)
            return
        if path not in in_flight:  # the audit read what RSTUF signs: that copy is kept
            box.signed[path] = dict(signed.hashes).get(TUF_HASH_ALGORITHM, "") if signed else ""
        box.dirty.add(path)

    def stored_facts(self, path: str, signed: compare.SignedTarget | None) -> compare.DiskFacts:
        """`settle`'s facts for a bucket (--storage): the page read, its copy put if lost."""

        try:
            digest = self.ctx.writer.target_digest(path)
        except FileNotFoundError:
            return compare.NO_FILE
        file = self.ctx.layout.path_of_target(path)
        self.ctx.writer.ensure_copy(file.parent, digest.hexdigest, file.name)
        copies = {digest.hexdigest: digest.length}
        if signed is not None and signed.copy_digest not in copies:
            old = f"{path.rpartition('/')[0]}/" if "/" in path else ""
            old_copy = f"{old}{prefixed_name(signed.copy_digest, file.name)}"
            if self.ctx.storage is not None and self.ctx.storage.exists(old_copy):
                copies[signed.copy_digest] = signed.length  # kept as written: named by digest
        listed = compare.Listed(digest.length, digest.hexdigest, copies)
        return compare.listed_disk_facts(listed, signed)


def run_audit(sync: Sync) -> int:
    """``--audit [--repair]`` for the command line (see `Audit.run_audit`)."""
    return Audit(sync).run_audit()


def project_of_target(path: str) -> str | None:
    """The project whose page `path` is (``simple/<name>/index.html`` or ``index.v1_json``)."""
    name = path.removeprefix("simple/").partition("/")[0]
    if path not in {project_target(name, form.basename) for form in ALL_FORMATS}:
        return None
    try:
        return name if project_dir_name(name) == name else None
    except InvalidProjectName:
        return None
