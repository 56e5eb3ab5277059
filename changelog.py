"""What PyPI's changelog and listing mean for the mirror: pure functions, no I/O.

The changelog names projects; the page fetched afterwards decides whether a
project exists (of the journal actions warehouse writes, a removal is the
only action after which a 404 is right). The whole listing of a full sync is
held in a compact `Listing`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from mirror_store import InvalidProjectName, project_dir_name
from pypi_client import ChangelogEntry, is_serial
from state import PendingProject

log = logging.getLogger("pypi_mirror")


def projects_to_refresh(entries: Iterable[ChangelogEntry]) -> dict[str, PendingProject]:
    """Every project the changelog mentions (both names of a rename), with its newest serial.

    The page fetched afterwards decides whether a project exists; the action
    only says whether a 404 is plausible (see `expects_page`). Invalid names are
    skipped with a warning.
    """
    wanted: dict[str, PendingProject] = {}
    for entry in entries:
        # The new name last: a rename that keeps the normalized name keeps the new spelling.
        for name in (entry.renamed_from, entry.name):
            if name is None:
                continue
            try:
                normalized = project_dir_name(name)
            except InvalidProjectName as exc:
                log.warning("skipping changelog entry %d: %s", entry.serial, exc)
                continue
            expect = name == entry.name and expects_page(entry)
            merge_pending(wanted, normalized, PendingProject(name, entry.serial, expect))
    return wanted


def expects_page(entry: ChangelogEntry) -> bool:
    """Whether the project named by `entry` exists after it (its page must not be a 404).

    Only a removal makes a 404 right; after anything else a 404 is a CDN that
    has not caught up (a project just created), so it is retried, then kept pending.
    """
    removal = entry.action == "remove project" or (entry.action == "remove" and not entry.version)
    return not removal


IDENTITY_ACTIONS = ("create", "remove project", "rename from ")


def identity_changes(entries: Iterable[ChangelogEntry]) -> set[str]:
    """Projects whose root-index line may change even if their page existed before and after.

    A project removed and created again may come back with another display
    name. This only decides whether the root index is re-read, never what a
    page holds or whether it exists.
    """
    names = set()
    for entry in entries:
        if entry.action.startswith(IDENTITY_ACTIONS):
            for name in (entry.name, entry.renamed_from):
                with contextlib.suppress(InvalidProjectName, TypeError):
                    names.add(project_dir_name(name))
    return names


def merge_pending(into: dict[str, PendingProject], name: str, item: PendingProject) -> None:
    """Keep, for each project, the newest serial seen and the display name that came with it."""
    current = into.get(name)
    if current is None or item.serial >= current.serial:
        into[name] = item


class Listing(Mapping[str, PendingProject]):
    """PyPI's whole listing, compact: {normalized: serial}, plus the display names that differ.

    700,000 projects are held through a full sync; a PendingProject each would
    add about 45 MiB, so one is made only when a project is looked up.
    """

    def __init__(self) -> None:
        self.serials: dict[str, int] = {}
        self.displays: dict[str, str] = {}  # only where the display name is not the key

    def add(self, normalized: str, display: str, serial: int) -> None:
        """Keep the newest serial per project and the display name that came with it."""
        if serial < self.serials.get(normalized, -1):
            return
        # Most names are listed already normalized: one string then serves as both.
        key = display if display == normalized else normalized
        self.serials[key] = serial
        if key is display:
            self.displays.pop(key, None)
        else:
            self.displays[key] = display

    def __getitem__(self, name: str) -> PendingProject:
        return PendingProject(self.displays.get(name, name), self.serials[name], expect_page=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self.serials)

    def __len__(self) -> int:
        return len(self.serials)

    def __contains__(self, name: object) -> bool:
        return name in self.serials


def add_listed(
    wanted: Listing,
    display: object,
    serial: object,
    allows: Callable[[str], bool] | None = None,
) -> None:
    """Add one listed project to `wanted` if its name and serial are valid; warn otherwise.

    `allows` (the ``--include``/``--exclude`` filter) drops a project silently.
    """
    try:
        normalized = project_dir_name(display)  # type: ignore[arg-type]
    except InvalidProjectName as exc:
        log.warning("skipping listed project: %s", exc)
        return
    if allows is not None and not allows(normalized):
        return
    if not is_serial(serial):
        log.warning("skipping listed project %r: serial %r is not a serial", display, serial)
        return
    assert isinstance(display, str) and isinstance(serial, int)
    wanted.add(normalized, display, serial)
