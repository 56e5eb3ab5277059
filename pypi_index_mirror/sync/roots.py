"""Rewriting the root indexes (``/simple/`` in each mirrored form) after pages changed.

The roots are merged as a stream from what is on disk with the changes a run
learned (``sync.plan`` decides which changes move them; ``mirror.roots``
renders and merges), or written whole from sorted members (a full sync, a
repair's rebuild). Each write records the old root in the outbox first, as
pages do, and removing a root of a form no longer mirrored is here too.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar

from pypi_index_mirror.mirror.formats import HTML, JSON, PageFormat
from pypi_index_mirror.mirror.roots import (
    iter_json_root,
    iter_root_index,
    merge_root,
    merge_root_lines,
    render_json_root_lines,
    render_root_lines,
)
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import prefixed_name
from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.plan import json_root_changes, root_changes
from pypi_index_mirror.sync.refresh import Refreshed

log = logging.getLogger(__name__)
T = TypeVar("T")


class Roots:
    """The root indexes of the mirrored forms: merged, written whole, or removed."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def finish_update(
        self,
        to_fetch: Mapping[str, PendingProject],
        outcome: Refreshed,
        renamed: set[str],
    ) -> None:
        """Merge what the fetched pages say into the root indexes, if anything they show moved.

        The HTML root lists names (`root_changes` says when it moves); the JSON
        root also each project's serial, so any page change moves it. What moved
        is told by `outcome` (the refresh just done) and by ``state.root_stale``
        (recorded changes the roots owe a merge for, not in `outcome`: a changed
        filter's removals, a repair's, a run killed before its merge). A merge
        clears ``root_stale``, so a later merge in the same run (the
        revalidation's after an update's, a --watch cycle's) reads and rewrites
        the roots only for what moved after this one, not again for what moved
        before.
        """
        fetched = to_fetch.keys() - outcome.failed - outcome.unfetched_names
        membership = outcome.membership_changed or self.ctx.state.root_stale
        html = root_changes(to_fetch, fetched, outcome.lists, renamed, membership)
        json_lines = None
        if html is not None or outcome.pages_changed:
            json_lines = json_root_changes(to_fetch, fetched, outcome.lists, outcome.serial)
        self.rewrite_roots(html, json_lines)

    def rewrite_roots(
        self,
        html_changes: dict[str, str | None] | None,
        json_changes: dict[str, tuple[str, int] | None] | None,
    ) -> None:
        """Merge the changes into each mirrored root (None: it stays), streaming it from disk.

        A merge also drops any project the filter excludes, so a run killed
        between removing excluded projects and this never leaves them listed.
        """
        for form in self.ctx.forms:
            if form is HTML and html_changes is not None and self.ctx.filter.everything:
                self.write_root_lines(form, self.merged_html(html_changes), True)
            elif form is HTML and html_changes is not None:
                members = self.filtered(self.merged(form, iter_root_index, html_changes))
                self.write_root(form, members, True)
            elif form is JSON and json_changes is not None:
                merged = self.filtered(self.merged(form, iter_json_root, json_changes))
                self.write_root(form, ((n, d, s) for n, (d, s) in merged), True)

    def merged(
        self,
        form: PageFormat,
        read: Callable[[BinaryIO], Iterable[tuple[str, T]]],
        changes: dict[str, T | None],
    ) -> Iterator[tuple[str, T]]:
        try:
            with self.ctx.writer.open_target(
                self.ctx.layout.path_of_target(form.root_target)
            ) as current:
                yield from merge_root(read(current), changes)
        except FileNotFoundError:
            yield from merge_root([], changes)

    def merged_html(self, changes: dict[str, str | None]) -> Iterator[bytes]:
        """The HTML root with `changes` merged as bytes (`merge_root_lines`): no filter to
        apply, so a line no change touches is copied as it is."""
        try:
            with self.ctx.writer.open_target(self.ctx.layout.root_page) as current:
                yield from merge_root_lines(current, changes)
        except FileNotFoundError:
            yield from merge_root_lines(io.BytesIO(), changes)

    def filtered(self, members: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
        if self.ctx.filter.everything:
            yield from members
        else:
            yield from ((name, rest) for name, rest in members if self.ctx.filter.allows(name))

    def write_roots(
        self, members: Callable[[], Iterable[tuple[str, str, int]]], record_change: bool
    ) -> None:
        """Write every mirrored form's root from sorted (normalized, display, serial) triples."""
        for form in self.ctx.forms:
            if form is HTML:
                self.write_root(form, ((n, d) for n, d, _s in members()), record_change)
            else:
                self.write_root(form, members(), record_change)

    def write_root(
        self, form: PageFormat, members: Iterable[tuple[Any, ...]], record_change: bool
    ) -> None:
        """Write one root index from sorted members if its bytes change."""
        lines = render_root_lines(members) if form is HTML else render_json_root_lines(members)
        self.write_root_lines(form, lines, record_change)

    def write_root_lines(
        self, form: PageFormat, lines: Iterable[bytes], record_change: bool
    ) -> None:
        """Write one root index from its rendered lines if its bytes change."""
        path = self.ctx.layout.path_of_target(form.root_target)
        directory, basename = path.parent, path.name
        temp, digest = self.ctx.writer.stage(lines, keep=not self.ctx.config.dry_run)
        old_digest = self.ctx.writer.root_digest(path)
        if digest == old_digest:
            self.ctx.writer.discard(temp)
            if not self.ctx.config.dry_run:
                self.ctx.writer.ensure_copy(directory, digest, basename)
                self.ctx.state.root_stale = False
            return
        if temp is None:  # dry run
            self.ctx.out(f"write {form.root_target}")
            return
        assert temp is not None
        # Intent before action, as for pages: a run killed right after the write
        # finds the root unchanged, and would neither tell RSTUF nor retire the copy.
        old_copy = directory / prefixed_name(old_digest, basename) if old_digest else None
        if old_copy is not None:
            self.ctx.writer.retire(old_copy)
        if record_change and self.ctx.owes_rstuf:
            self.ctx.state.outbox.owe({form.root_target: old_digest})
        self.ctx.save("root-intent")
        self.ctx.writer.make_directory(directory)
        self.ctx.writer.install(directory, temp, digest, basename)
        if old_copy is not None:
            self.ctx.writer.retire(old_copy)  # the grace starts at the real replacement
        self.ctx.state.root_stale = False

    def remove_root(self, form: PageFormat, record_change: bool) -> None:
        """Remove a root index (its form is no longer mirrored); its copy keeps its grace."""
        path = self.ctx.layout.path_of_target(form.root_target)
        old_digest = self.ctx.writer.root_digest(path)
        if old_digest is None:
            return
        if self.ctx.config.dry_run:
            self.ctx.out(f"remove {form.root_target}")
            return
        self.ctx.writer.retire(path.parent / prefixed_name(old_digest, path.name))
        if record_change and self.ctx.owes_rstuf:
            self.ctx.state.outbox.owe({form.root_target: old_digest})
        self.ctx.save("root-intent")  # intent first, as for pages
        self.ctx.writer.unlink_target(path)
