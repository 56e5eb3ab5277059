"""What PyPI's changelog and listing mean for the mirror: pure functions, no I/O.

An XML-RPC ``changelog_since_serial`` answer is checked into `ChangelogEntry`
records (`parse_changelog_rows`). The changelog names projects; the page
fetched afterwards decides whether a project exists (of the journal actions
warehouse writes, a removal is the only action after which a 404 is right). The
whole listing of a full sync is held in a compact `Listing`.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import io
import logging
import tempfile
from array import array
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import InvalidProjectName, project_dir_name
from pypi_index_mirror.upstream.errors import ChangelogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangelogEntry:
    name: str
    version: str | None
    timestamp: int
    action: str
    serial: int

    @property
    def renamed_from(self) -> str | None:
        """The old name of a legacy ``rename from <old>`` entry."""
        if self.action.startswith("rename from "):
            return self.action[len("rename from ") :].strip()
        return None


def parse_changelog_rows(rows: object, since: int) -> list[ChangelogEntry]:
    """Check and convert a ``changelog_since_serial`` answer.

    Serials must be above `since` and ascending; otherwise the answer cannot be
    trusted to cover what it claims and ChangelogError is raised.
    """
    if not isinstance(rows, list):
        raise ChangelogError(f"changelog_since_serial returned {type(rows).__name__}, not a list")
    entries = []
    previous = since
    for row in rows:
        if not (isinstance(row, list | tuple) and len(row) == 5):
            raise ChangelogError(f"malformed changelog row {row!r:.120}")
        name, version, timestamp, action, serial = row
        if not (isinstance(name, str) and isinstance(action, str) and type(serial) is int):
            raise ChangelogError(f"malformed changelog row {row!r:.120}")
        if serial <= previous:
            raise ChangelogError(
                f"changelog serials go backwards ({serial} after {previous}); "
                "refusing to apply it — retry later"
            )
        previous = serial
        ts = timestamp if type(timestamp) is int else 0
        entries.append(
            ChangelogEntry(name, version if isinstance(version, str) else None, ts, action, serial)
        )
    return entries


def is_serial(value: object) -> bool:
    """A journal serial: an int, not a bool, not negative (state.json refuses anything else)."""
    return type(value) is int and value >= 0


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


MAX_SERIAL = (1 << 63) - 1  # what an array('q') holds; far beyond any journal


class Listing(Mapping[str, PendingProject]):
    """PyPI's whole listing, compact and sorted by normalized name; no object per project.

    700,000 projects are held through a full sync: as Python strings, ints and
    dict entries they took 155 MiB; here they are a few flat buffers (under
    40 bytes a project). While the listing streams in, each project is one
    ``normalized NUL display NUL serial LF`` record; every `RUN` records are
    sorted into a run (an unlinked temp file in `spill_dir`, so the runs and
    the final buffers are never in memory together; in memory without one),
    and the first read merges the runs into

    * ``_names``: the normalized names back to back, ``_name_ends`` their ends;
    * ``_displays``: the display names that differ from the normalized one
      (most are listed normalized already), ``_display_ends`` per project;
    * ``_serials``: the newest serial of each project.

    The buffers are allocated once at their final size (sizes counted while
    the records came in): grown piece by piece, they left as much memory
    again fragmented in the allocator. Lookups bisect the sorted names;
    iteration is in the root index's order. A PendingProject is made only
    for the project looked at.
    """

    RUN = 1 << 16  # records sorted at a time while the listing streams in

    def __init__(self, spill_dir: Path | None = None) -> None:
        self._spill_dir = spill_dir
        self._records: list[bytes] = []  # the current, unsorted run
        self._runs: list[BinaryIO] = []  # sorted runs of LF-terminated records
        self._count = self._name_bytes = self._shown_bytes = 0  # over every record added
        self._set_buffers(0, 0, 0)
        self._frozen = True

    def add(self, normalized: str, display: str, serial: int) -> None:
        """Record one listed project; of several records of one name the newest serial wins.

        (Two spellings at one serial cannot both be PyPI's: then the one that sorts last.)
        """
        if not 0 <= serial <= MAX_SERIAL:
            raise ValueError(f"serial {serial} out of range")
        if self._frozen and len(self._serials):
            self._runs.append(self._new_run(self._frozen_records()))
            self._set_buffers(0, 0, 0)
        self._frozen = False
        shown = "" if display == normalized else display
        self._records.append(f"{normalized}\0{shown}\0{serial}\n".encode("ascii"))
        self._count += 1
        self._name_bytes += len(normalized)
        self._shown_bytes += len(shown)
        if len(self._records) >= self.RUN:
            self._spill()

    # reading

    def __getitem__(self, name: str) -> PendingProject:
        index = self.index(name)
        if index < 0:
            raise KeyError(name)
        return self.item(index)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.iter_items())

    def __len__(self) -> int:
        self._freeze()
        return len(self._serials)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.index(name) >= 0

    def items(self) -> ItemsView[str, PendingProject]:
        return _Items(self)

    def iter_items(self) -> Iterator[tuple[str, PendingProject]]:
        """(normalized, project) in sorted order, without a lookup per project."""
        self._freeze()
        names, displays = self._names, self._displays
        start = shown_start = 0
        for end, shown_end, serial in zip(
            self._name_ends, self._display_ends, self._serials, strict=True
        ):
            name = names[start:end].decode("ascii")
            display = (
                displays[shown_start:shown_end].decode("ascii") if shown_end > shown_start else name
            )
            yield name, PendingProject(display, serial, expect_page=True)
            start, shown_start = end, shown_end

    def index(self, name: str) -> int:
        """The position of `name` in sorted order, or -1 if it is not listed."""
        self._freeze()
        try:
            key = name.encode("ascii")
        except UnicodeEncodeError:
            return -1
        view = _NameView(self._names, self._name_ends)
        index = bisect.bisect_left(view, key)
        return index if index < len(view) and view[index] == key else -1

    def item(self, index: int) -> PendingProject:
        """The project at sorted position `index`."""
        self._freeze()
        name = _NameView(self._names, self._name_ends)[index].decode("ascii")
        start = self._display_ends[index - 1] if index else 0
        end = self._display_ends[index]
        display = self._displays[start:end].decode("ascii") if end > start else name
        return PendingProject(display, self._serials[index], expect_page=True)

    def max_serial(self, default: int) -> int:
        self._freeze()
        return max(self._serials, default=default)

    # building

    def _set_buffers(self, count: int, name_bytes: int, shown_bytes: int) -> None:
        self._names, self._displays = bytearray(name_bytes), bytearray(shown_bytes)
        self._name_ends, self._display_ends = array("I", [0]) * count, array("I", [0]) * count
        self._serials = array("q", [0]) * count

    def _spill(self) -> None:
        self._records.sort()
        self._runs.append(self._new_run(self._records))
        self._records = []

    def _new_run(self, records: Iterable[bytes]) -> BinaryIO:
        if self._spill_dir is None:
            return io.BytesIO(b"".join(records))
        run = tempfile.TemporaryFile(dir=self._spill_dir)  # noqa: SIM115 (closed by _freeze)
        try:
            run.writelines(records)
        except BaseException:
            run.close()
            raise
        return run

    def _freeze(self) -> None:
        """Merge the sorted runs into the flat buffers (once, on the first read)."""
        if self._frozen:
            return
        self._spill()
        runs, self._runs = self._runs, []
        with contextlib.ExitStack() as closing:
            for run in runs:
                closing.callback(run.close)
                run.seek(0)
            self._merge(runs)
        self._frozen = True

    def _merge(self, runs: list[BinaryIO]) -> None:
        self._set_buffers(self._count, self._name_bytes, self._shown_bytes)
        self._filled = self._name_used = self._shown_used = 0
        held: tuple[bytes, bytes, int] | None = None
        for record in heapq.merge(*runs):
            name, display, serial_text = record[:-1].split(b"\0")
            serial = int(serial_text)
            if held is not None and held[0] == name:
                if serial >= held[2]:
                    held = (name, display, serial)
                continue
            if held is not None:
                self._put(*held)
            held = (name, display, serial)
        if held is not None:
            self._put(*held)
        filled = self._filled  # fewer than counted where one name was listed twice
        del self._names[self._name_used :], self._displays[self._shown_used :]
        del self._name_ends[filled:], self._display_ends[filled:], self._serials[filled:]

    def _put(self, name: bytes, display: bytes, serial: int) -> None:
        index, start, shown_start = self._filled, self._name_used, self._shown_used
        self._name_used = end = start + len(name)
        self._names[start:end] = name
        self._shown_used = shown_end = shown_start + len(display)
        self._displays[shown_start:shown_end] = display
        self._name_ends[index], self._display_ends[index] = end, shown_end
        self._serials[index] = serial
        self._filled = index + 1

    def _frozen_records(self) -> Iterator[bytes]:
        for name, item in self.iter_items():
            shown = "" if item.display_name == name else item.display_name
            yield f"{name}\0{shown}\0{item.serial}\n".encode("ascii")


class _NameView(Sequence[bytearray]):
    """The sorted names of a Listing as a sequence of bytes, for `bisect`."""

    def __init__(self, names: bytearray, ends: array[int]) -> None:
        self._names, self._ends = names, ends

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> bytearray:  # type: ignore[override]
        start = self._ends[index - 1] if index else 0
        return self._names[start : self._ends[index]]


class _Items(ItemsView[str, PendingProject]):
    """`items()` of a Listing or Selection: iterated without a lookup per key."""

    _mapping: Listing | Selection

    def __iter__(self) -> Iterator[tuple[str, PendingProject]]:
        return self._mapping.iter_items()


class Selection(Mapping[str, PendingProject]):
    """What a full sync fetches: the listing but the projects found current, plus a few more.

    The few more are projects PyPI no longer lists but the mirror has, and
    pending ones; they are held as PendingProjects. Excluding a listed project
    costs one byte, so a resumed first sync or a full check of 700,000
    projects builds no second mapping of them.
    """

    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self._hidden = bytearray(len(listing))  # 1: excluded, or superseded by `extra`
        self._hidden_count = 0
        self.excluded = 0  # listed projects left out (found current)
        self.local_seen = 0  # projects found on disk while selecting (see sync_plan)
        self.extra: dict[str, PendingProject] = {}

    def exclude(self, index: int) -> None:
        """Leave out the listed project at sorted position `index` (it is current)."""
        if self._hide(index):
            self.excluded += 1

    def _hide(self, index: int) -> bool:
        if self._hidden[index]:
            return False
        self._hidden[index] = 1
        self._hidden_count += 1
        return True

    def merge(self, name: str, item: PendingProject) -> None:
        """Add `item` unless the selection already wants `name` at a newer serial."""
        current = self.get(name)
        if current is not None and item.serial < current.serial:
            return
        index = self.listing.index(name)
        if index >= 0:
            self._hide(index)  # from now on it comes from `extra`
        self.extra[name] = item

    def __getitem__(self, name: str) -> PendingProject:
        if name in self.extra:
            return self.extra[name]
        index = self.listing.index(name)
        if index < 0 or self._hidden[index]:
            raise KeyError(name)
        return self.listing.item(index)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.iter_items())

    def __len__(self) -> int:
        return len(self.listing) - self._hidden_count + len(self.extra)

    def items(self) -> ItemsView[str, PendingProject]:
        return _Items(self)

    def iter_items(self) -> Iterator[tuple[str, PendingProject]]:
        hidden = self._hidden
        for index, pair in enumerate(self.listing.iter_items()):
            if not hidden[index]:
                yield pair
        yield from self.extra.items()


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
    if not is_serial(serial) or serial > MAX_SERIAL:  # type: ignore[operator]
        log.warning("skipping listed project %r: serial %r is not a serial", display, serial)
        return
    assert isinstance(display, str) and isinstance(serial, int)
    wanted.add(normalized, display, serial)
