"""What a ``--dry-run`` prints on stdout: the plan of a run, made without fetching a page.

An update's plan comes from the changelog alone: every project it names would
be fetched, and the newest entry says whether its page should exist (an add
for RSTUF) or not (a remove), in each form the mirror holds (``index.html``,
``index.v1_json``: ``--simple-format``). Whether a fetched page really changes
is only known by fetching it, so the RSTUF lines are what *may* change. A full
sync's plan is a count from the listing. Pure functions: the caller prints the lines.

Lines, one fact each, for people and for ``grep``/``awk``::

    plan update fetch=3 rstuf=4 serial=1100->1134
    fetch numpy
    rstuf-add simple/numpy/index.html
    rstuf-remove simple/django/index.html
    plan first-sync fetch=1005 listed=1005 serial=1134
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from pypi_index_mirror.mirror.formats import HTML, PageFormat
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import project_target


def outbox_actions(dirty: Iterable[str], exists: Callable[[str], bool]) -> dict[str, str]:
    """What delivering the outbox would send: each path's state on disk now."""
    return {path: "add" if exists(path) else "remove" for path in dirty}


def update_plan(
    since: int,
    newest: int,
    to_fetch: Mapping[str, PendingProject],
    outbox: Mapping[str, str],
    root_may_change: bool,
    forms: Sequence[PageFormat] = (HTML,),
) -> list[str]:
    """The plan of an update: the projects to fetch, then the RSTUF actions that may follow.

    `outbox` is `outbox_actions` of what is owed already; a project the
    changelog names wins over it (its page's final state is what would be sent).
    Each project has a target per mirrored form in `forms`. `root_may_change`
    is the HTML root's (names join, leave or change); the JSON root also lists
    each project's serial, so any project fetched may change it.
    """
    actions = dict(outbox)
    for name, item in to_fetch.items():
        for form in forms:
            target = project_target(name, form.basename)
            actions[target] = "add" if item.expect_page else "remove"
    for form in forms:
        if root_may_change if form is HTML else bool(to_fetch):
            actions[form.root_target] = "add"
    lines = [f"plan update fetch={len(to_fetch)} rstuf={len(actions)} serial={since}->{newest}"]
    lines += [f"fetch {name}" for name in sorted(to_fetch)]
    lines += [f"rstuf-{action} {path}" for path, action in sorted(actions.items())]
    return lines


def full_sync_plan(
    kind: str, fetch: int, listed: int, serial: int, outbox: Mapping[str, str]
) -> list[str]:
    """The plan of a first sync or a full check: how many pages it would fetch.

    A first sync registers nothing with RSTUF (generate_csv.py does, after it);
    a full check sends what differs, which only fetching tells: only what the
    outbox owes already is listed.
    """
    lines = [f"plan {kind} fetch={fetch} listed={listed} serial={serial}"]
    lines += [f"rstuf-{action} {path}" for path, action in sorted(outbox.items())]
    return lines
