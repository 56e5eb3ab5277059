"""What a run must fetch and rewrite, decided from what it has read: pure functions, no I/O.

The run's phases (``full_sync``, ``update``, ...) read PyPI and the disk; the
rules that turn what they read into work live here, so each is tested without
a server or a mirror (tests/test_sync_plan.py), as python-tuf's ngclient keeps
its trusted set free of I/O:

- which listed projects a full sync may skip (`is_current`) and which it must
  fetch (`full_sync_fetches`);
- whether a fetched page is as new as the changelog says (`stale_answer`), and
  whether a project's forms (HTML, PEP 691 JSON) show it at one moment (`forms_answer`);
- what an update changes in the root indexes (`root_changes`, `json_root_changes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.upstream.changelog import Listing, Selection
from pypi_index_mirror.upstream.errors import MissingPage, StalePage
from pypi_index_mirror.upstream.pages import FetchedPage


def is_current(listed: PendingProject, on_disk_serial: int | None) -> bool:
    """Whether the page on disk holds what the listing says, so a full sync need not fetch it.

    `on_disk_serial` is the serial trailer warehouse writes at the end of each
    page (``<!--SERIAL n-->``); None when there is no page or no trailer.
    """
    return on_disk_serial is not None and on_disk_serial >= listed.serial


def full_sync_fetches(
    wanted: Listing,
    local: Iterable[str],
    on_disk_serial: Callable[[str, PendingProject], int | None] | None,
    pending: Mapping[str, PendingProject],
) -> Selection:
    """What a full sync fetches: every listed project not current, every local project
    PyPI no longer lists (its page decides: 404 removes it), and every pending one.

    `local` (the mirror's project directories) is streamed once, and no set of
    it is kept. A listed project on disk and not pending is current when the
    serial of its pages (`on_disk_serial(name, listed)`, asked only for those)
    `is_current`; without `on_disk_serial` (``--full-check``) none is. The
    current ones are left out of `wanted` with a byte each (`Selection.excluded`
    counts them): no second 700,000-entry mapping, whatever the mirror holds.
    `Selection.local_seen` counts the local projects.
    """
    to_fetch = Selection(wanted)
    for name in local:
        to_fetch.local_seen += 1
        index = wanted.index(name)
        if index < 0:
            to_fetch.merge(name, PendingProject(name, 0))
            continue
        if on_disk_serial is None or name in pending:
            continue
        listed = wanted.item(index)
        if is_current(listed, on_disk_serial(name, listed)):
            to_fetch.exclude(index)
    for name, item in pending.items():
        to_fetch.merge(name, item)
    return to_fetch


def stale_answer(page: FetchedPage, wanted: PendingProject) -> StalePage | MissingPage | None:
    """Why `page` is older than the changelog says it must be, or None when it will do.

    A CDN may serve a page from before the change the changelog reports: a
    lower ``X-PyPI-Last-Serial``, or a 404 for a project the newest entry says
    exists (`PendingProject.expect_page`). A 404 after a removal is the answer.
    """
    if page.body is None:
        return MissingPage(page.name, wanted.serial) if wanted.expect_page else None
    if page.serial is None or page.serial < wanted.serial:
        return StalePage(page.name, wanted.serial, page.serial or 0)
    return None


@dataclass(slots=True)
class FormsAnswer:
    """What one project's answers (one per form) say: done, or which forms to fetch again."""

    behind: tuple[int, ...]  # indexes of the forms to fetch again; empty: use them
    problem: StalePage | MissingPage | None  # why (what the run reports if it stays so)
    expected: int  # the serial the forms fetched again must reach


def forms_answer(pages: Sequence[FetchedPage], wanted: PendingProject) -> FormsAnswer:
    """Whether a project's pages in each form show it at one moment, as new as `wanted`.

    Each form must pass `stale_answer` against the newest serial any of them
    (or the changelog) shows: a form behind it is a CDN copy not caught up. A
    404 beside a 200 is a removal or a creation not yet seen by every cache:
    when the changelog says the project exists only the 404s are behind,
    otherwise every form is asked again. With one form this is `stale_answer`.
    """
    newest = max([wanted.serial, *(page.serial or 0 for page in pages if page.body is not None)])
    target = PendingProject(wanted.display_name, newest, wanted.expect_page)
    missing = [index for index, page in enumerate(pages) if page.body is None]
    if missing and len(missing) < len(pages) and not wanted.expect_page:
        everything = tuple(range(len(pages)))
        return FormsAnswer(everything, MissingPage(pages[missing[0]].name, newest), newest)
    problems = [(index, stale_answer(page, target)) for index, page in enumerate(pages)]
    behind = [(index, problem) for index, problem in problems if problem is not None]
    return FormsAnswer(tuple(i for i, _ in behind), behind[0][1] if behind else None, newest)


def json_root_changes(
    to_fetch: Mapping[str, PendingProject],
    fetched: Set[str],
    listed: Callable[[str], bool],
    serial_of: Callable[[str, PendingProject], int],
) -> dict[str, tuple[str, int] | None]:
    """The JSON root's lines an update merges: each fetched project's name and page serial.

    Unlike the HTML root's (`root_changes`), a line changes whenever the
    project's serial does, so the caller merges these whenever a page changed.
    """
    return {
        name: (to_fetch[name].display_name, serial_of(name, to_fetch[name]))
        if listed(name)
        else None
        for name in fetched
    }


def root_changes(
    to_fetch: Mapping[str, PendingProject],
    fetched: Set[str],
    listed: Callable[[str], bool],
    identity_changed: Set[str],
    membership_changed: bool,
) -> dict[str, str | None] | None:
    """The root-index lines an update merges, or None when the root stays as it is.

    The root is rewritten when a page joined or left the listing (created,
    removed, quarantined, or owed by an earlier run: `membership_changed`) or a
    fetched project's identity changed (created, removed or renamed, so its
    display name may differ). Every fetched project then gets its display name,
    or None when `listed` says it leaves the root (gone or quarantined).
    """
    if not membership_changed and not identity_changed & fetched:
        return None
    return {name: to_fetch[name].display_name if listed(name) else None for name in fetched}


# A mirror holding fewer projects than this may really lose most of them at once (a small
# filtered mirror); above it, a listing of less than half of them is a stale cache.
SHRUNKEN_LISTING_MIN = 100


def listing_refusal(seen: int, listed: int, held: int, serial: int | None) -> str | None:
    """Why a project listing cannot be the index's, or None when it may be taken as the truth.

    Warehouse caches ``list_packages_with_serial`` for up to an hour and was seen to
    answer an empty one; PyPI's CDN caches the JSON root. Taken as the truth, such a
    listing would end a first sync with nothing mirrored, or make a full check drop
    every project it leaves out from the roots. `seen` counts the listing's entries
    before the project filter, `listed` those the filter allows, `held` the projects
    (the filter allows) the mirror holds, `serial` the index's journal serial. Refused:
    an empty listing of an index whose journal is not empty, and a listing with fewer
    than half of the projects a mirror of `SHRUNKEN_LISTING_MIN` or more holds.
    """
    if seen == 0 and serial:
        return f"lists no project at all although its journal is at serial {serial}"
    if held >= SHRUNKEN_LISTING_MIN and listed * 2 < held:
        return f"lists {listed} project(s), fewer than half of the {held} this mirror holds"
    return None
