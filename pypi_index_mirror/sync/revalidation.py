"""Revalidation's run side (``--revalidate-period``): pages PyPI changed without a changelog entry.

``sync.revalidate`` plans, purely, how many pages are due and which slice of
the root's members comes next; `Revalidation` fetches that slice again
conditionally (the held bytes' ETag) through the `Refresher`, as an update's
pages, merges the roots and moves the cursor.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.sync import revalidate
from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.refresh import Refresher
from pypi_index_mirror.sync.roots import Roots

log = logging.getLogger(__name__)


class Revalidation:
    """Fetch again, conditionally, the share of the pages the period asks for now."""

    def __init__(self, ctx: RunContext, refresher: Refresher, roots: Roots) -> None:
        self.ctx = ctx
        self.refresher = refresher
        self.roots = roots

    def revalidate(self, limit: int | None = None) -> None:
        """Fetch again, conditionally, the share of the mirror's projects the period asks for
        now (`revalidate.plan`), after the cursor; `limit` caps how many.

        A changed page goes through `refresh` as an update's does: written in
        every form, its hash-prefixed copy made, owed to RSTUF. One that fails
        stays pending (fetched in full next run). The slice comes from the root
        index, streamed in sorted order: quarantined projects, which it does not
        list, change only with a changelog entry anyway.
        """
        period, cursor = self.ctx.config.revalidate_period, self.ctx.state.revalidation
        if period <= 0 or self.ctx.config.dry_run or self.ctx.halt.is_set:
            return
        total = cursor.total or self.ctx.root_slice("", 0)[1]  # a slice of none: the count
        planned = revalidate.plan(cursor, total, time.time(), period, limit)
        if planned.count == 0:
            self.ctx.state.revalidation = planned.cursor
            return
        chosen, total = self.ctx.root_slice(cursor.after, planned.count)
        primary = self.ctx.forms[0].basename
        wanted = {
            name: PendingProject(display, self.ctx.writer.local_serial(name, primary) or 0)
            for name, display in chosen
        }
        checked = (self.ctx.pypi.not_modified, self.ctx.summary.updated, self.ctx.summary.removed)
        with self.ctx.applying_changes():
            outcome = self.refresher.refresh(
                wanted, record_changes=True, keep_unfetched=False, conditional=True
            )
            self.roots.finish_update(wanted, outcome, set())
            if not self.ctx.halt.is_set:
                done = revalidate.cursor_after(chosen, planned.cursor)
                self.ctx.state.revalidation = dataclasses.replace(done, total=total)
        log.info(
            "revalidated %d of %d projects (through %s): %d pages unchanged (304), "
            "%d projects changed, %d gone",
            len(wanted),
            total,
            chosen[-1][0],
            self.ctx.pypi.not_modified - checked[0],
            self.ctx.summary.updated - checked[1],
            self.ctx.summary.removed - checked[2],
        )
