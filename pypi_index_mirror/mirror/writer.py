"""The writer: the only code that changes the served tree.

Pages are written through a temp file in ``.staging/`` and renamed into place,
each hard-linked to its hash-prefixed copy (the name a TUF client with
consistent snapshots downloads); superseded copies are retired and swept once
no client can still be sent to them.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pypi_index_mirror.mirror.formats import BY_BASENAME
from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import (
    HASH_FACTORIES,
    JSON_PAGE_NAME,
    PAGE_NAME,
    PAGE_NAMES,
    TUF_HASH_ALGORITHM,
    FileDigest,
    MirrorLayout,
    crash_hook_armed,
    crash_point,
    digest_file,
    digest_of_copy,
    hexdigest_of,
    name_io_error,
    prefixed_name,
    target_of_copy,
)
from pypi_index_mirror.upstream.errors import NotASimplePage
from pypi_index_mirror.upstream.pages import (
    FetchedPage,
    facts_of_checked_page,
    json_page_serial,
    json_page_serial_at_start,
    page_serial,
)

# How much of a JSON page's end `MirrorWriter.local_serial` reads first, then next; past
# that, the whole page (only a project with thousands of versions has a longer tail).
JSON_TAIL_READS = (4096, 65536)


# --- the writer: the only code that changes the mirror


@dataclass
class Change:
    """What one fetched page (one form of a project's page) does to the mirror."""

    name: str
    display_name: str
    page: FetchedPage
    old: bytes | None  # the page on disk before, if any
    basename: str = PAGE_NAME  # which form: index.html or index.v1_json

    @property
    def removes(self) -> bool:
        return self.page.body is None

    @property
    def modifies(self) -> bool:
        return self.page.body != self.old

    def listed_before(self) -> bool:
        """Whether the page on disk put the project in the root index (same rule as after)."""
        if self.old is None:
            return False
        try:
            return BY_BASENAME[self.basename].inspect(self.name, self.old).listed
        except NotASimplePage:
            return True  # damaged on disk: the root index still lists it

    def listed_after(self) -> bool:
        return self.page.facts is not None and self.page.facts.listed


class MirrorWriter:
    """Writes pages atomically, keeps their hash-prefixed copies, retires old copies.

    A page lives at ``<dir>/index.html`` and, hard-linked to the same inode,
    at ``<dir>/<blake2b-256>.index.html``: the name a TUF client with
    consistent snapshots downloads. A superseded copy stays `grace` seconds (a
    client may be between its metadata refresh and its download); the copy
    RSTUF still signs, and those on their way to it, stay until RSTUF confirms
    a newer state, then `grace` seconds more (see `collect_retired`).
    """

    def __init__(self, layout: MirrorLayout, state: State, clock: Callable[[], float] = time.time):
        self.layout = layout
        self.state = state
        self.clock = clock
        self._staging_ready = False
        self._crash_armed = crash_hook_armed()
        # str paths: a first sync writes 700,000 pages, and Path joins cost more than syscalls
        self._simple = os.fspath(layout.simple_dir)
        self._served_prefix = os.fspath(layout.served_dir) + "/"
        self._temp_prefix = f"{os.fspath(layout.staging_dir)}/.tmp-{os.getpid()}-"

    def read_page(self, name: str, basename: str = PAGE_NAME) -> bytes | None:
        try:
            with open(f"{self._simple}/{name}/{basename}", "rb", buffering=0) as handle:
                return handle.readall()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def local_serial(self, name: str, basename: str = PAGE_NAME) -> int | None:
        """The serial of a page on disk, read from its trailer (HTML) or its ``meta`` (JSON).

        None: absent or unknown. Reads the last 64 bytes of an HTML page; of a
        JSON page its first 256, then its last 4 KiB (where warehouse's sorted
        keys put ``meta``), rarely more.
        """
        try:
            with open(self.layout.project_page(name, basename), "rb") as handle:
                if basename == JSON_PAGE_NAME:
                    return self._json_serial(handle)
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64))
                return page_serial(handle.read())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def quarantined(self, name: str, basename: str = PAGE_NAME) -> bool:
        """Whether the page on disk says the project is quarantined (PEP 792), cheaply.

        A quarantined project keeps its page but leaves the roots; PyPI's
        ``list_packages_with_serial`` still lists it, so a full sync that finds
        its page current must read this to leave it out. The status is near the
        start of an HTML page (its second meta) and in the last bytes of a JSON
        one (warehouse's sorted keys: ``project-status`` after the files).
        """
        try:
            with open(self.layout.project_page(name, basename), "rb") as handle:
                if basename != JSON_PAGE_NAME:
                    facts = facts_of_checked_page(handle.read(512))
                else:
                    size = handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, size - JSON_TAIL_READS[0]))
                    facts = facts_of_checked_page(handle.read())
                    if facts is None and size > JSON_TAIL_READS[0]:
                        handle.seek(0)
                        facts = facts_of_checked_page(handle.read())
        except (FileNotFoundError, NotADirectoryError):
            return False
        return facts is not None and not facts.listed

    @staticmethod
    def _json_serial(handle: BinaryIO) -> int | None:
        serial = json_page_serial_at_start(handle.read(256))
        if serial is not None:
            return serial
        size = handle.seek(0, os.SEEK_END)
        for window in (*JSON_TAIL_READS, size):
            handle.seek(max(0, size - window))
            serial = json_page_serial(handle.read())
            if serial is not None or window >= size:
                return serial
        return None

    def local_projects(self) -> Iterator[str]:
        """Names of the projects with a page on disk in any form, streamed (a full scan: only
        for full syncs and filter changes; 700,000 names are never held at once)."""
        try:
            entries = os.scandir(self.layout.simple_dir)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if entry.is_dir() and any(
                    os.path.exists(os.path.join(entry.path, page)) for page in PAGE_NAMES
                ):
                    yield entry.name

    def has_page(self, name: str, basename: str | None = None) -> bool:
        """Whether project `name` has a page on disk (in form `basename`, else in any form)."""
        names = PAGE_NAMES if basename is None else (basename,)
        return any(os.path.exists(f"{self._simple}/{name}/{page}") for page in names)

    def apply(self, change: Change) -> None:
        if change.removes:
            self.remove_page(change.name, change.basename)
        else:
            assert change.page.body is not None
            directory = f"{self._simple}/{change.name}"
            self.store(directory, change.page.body, change.old, change.basename)

    def store_new(self, name: str, body: bytes, basename: str = PAGE_NAME) -> None:
        """Write a page of project `name` in a form it has none of on disk yet."""
        self.store(f"{self._simple}/{name}", body, None, basename)

    def store(
        self, directory: str | Path, body: bytes, old: bytes | None, basename: str = PAGE_NAME
    ) -> bool:
        """Write `body` as directory/`basename` plus its prefixed copy; retire the old copy.

        Returns whether the page's bytes changed. A new page costs six syscalls:
        mkdir, open, write, close, link (the prefixed copy), rename.
        """
        directory = os.fspath(directory)
        digest = hexdigest_of(body)
        if old == body:
            self.ensure_copy(directory, digest, basename)
            return False
        if old is None:
            make_directory(directory)
        try:
            temp = self._write_temp(body)
        except OSError as exc:  # ENOSPC names no file: the page being written is the place
            name_io_error(exc, f"{directory}/{basename}")
            raise
        self.install(directory, temp, digest, basename)
        self.retire_replaced(directory, old, body, basename)
        return True

    def install(
        self, directory: str | Path, temp: str, digest: str, basename: str = PAGE_NAME
    ) -> None:
        """Move a staged page into place: hash-prefixed copy first, then the page itself."""
        directory = os.fspath(directory)
        copy = f"{directory}/{prefixed_name(digest, basename)}"
        try:
            self._crash_point("page-temp", copy)
            self._link_copy(temp, copy)
            os.rename(temp, f"{directory}/{basename}")
            self._crash_point("page-renamed", copy)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        if self.state.retired:
            self.state.retired.pop(self._relative(copy), None)

    def _crash_point(self, moment: str, copy: str) -> None:
        """`crash_point` at the page `copy` stands for, computed only where the hook is armed."""
        if self._crash_armed:
            crash_point(moment, (target_of_copy(self._relative(copy)),))

    def stage(self, chunks: Iterable[bytes], keep: bool = True) -> tuple[str | None, str]:
        """Write `chunks` to a temp file (unless not `keep`), hashing them on the way."""
        hasher = HASH_FACTORIES[TUF_HASH_ALGORITHM]()
        temp = self._temp_name() if keep else None
        try:
            with open(temp, "wb") if temp else contextlib.nullcontext() as handle:
                for chunk in chunks:
                    hasher.update(chunk)
                    if handle is not None:
                        handle.write(chunk)
        except OSError as exc:
            self.discard(temp)
            name_io_error(exc, temp or "")
            raise
        return temp, hasher.hexdigest()

    def discard(self, temp: str | None) -> None:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def root_digest(self, path: Path | None = None) -> str | None:
        try:
            return digest_file(path or self.layout.root_page).hexdigest
        except FileNotFoundError:
            return None

    def ensure_copy(self, directory: str | Path, digest: str, basename: str = PAGE_NAME) -> None:
        """Relink an unchanged page's prefixed copy if a killed run or damage broke it."""
        page = os.path.join(directory, basename)
        copy = os.path.join(directory, prefixed_name(digest, basename))
        if not (os.path.exists(copy) and os.path.samefile(copy, page)):
            self._link_copy(page, copy)

    def _temp_name(self) -> str:
        if not self._staging_ready:
            self.layout.staging_dir.mkdir(parents=True, exist_ok=True)
            self._staging_ready = True
        return f"{self._temp_prefix}{random.getrandbits(64):016x}"

    def _write_temp(self, body: bytes) -> str:
        """The page's bytes in a new temp file: os.open/write/close, no file object."""
        path = self._temp_name()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            written = os.write(fd, body)
            while written < len(body):  # a short write: the rest
                written += os.write(fd, memoryview(body)[written:])
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)
        return path

    def _link_copy(self, source: str | Path, copy: str | Path) -> None:
        """Make `copy` a hard link to `source`, replacing whatever had that name atomically.

        Where nothing has that name yet (a new page), the link is made in place.
        """
        try:
            os.link(source, copy)
            return
        except FileExistsError:
            pass
        link = self._temp_name()
        os.link(source, link)
        try:
            os.replace(link, copy)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            raise

    def remove_project(self, name: str) -> None:
        """Unlink the project's pages at once; their prefixed copies stay until their grace ends."""
        for basename in PAGE_NAMES:
            self.remove_page(name, basename)

    def remove_page(self, name: str, basename: str = PAGE_NAME) -> None:
        """Unlink one form of a page at once; its prefixed copy stays until its grace ends."""
        directory = self.layout.project_dir(name)
        self.remove_file(directory, basename)
        self._remove_if_empty(directory)

    def remove_file(self, directory: Path, basename: str) -> bool:
        """Unlink directory/`basename` (a page or a root), retiring its prefixed copy."""
        page = directory / basename
        try:
            old_digest = digest_file(page).hexdigest
            page.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        self.retire(directory / prefixed_name(old_digest, basename))
        return True

    def prepare(self, change: Change) -> bool:
        """Before `apply`: record what it will retire; True if the state must be saved first."""
        directory = f"{self._simple}/{change.name}"  # a str: `_relative` cuts its prefix
        return self.retire_replaced(directory, change.old, change.page.body, change.basename)

    def retire_replaced(
        self,
        directory: str | Path,
        old: bytes | None,
        new: bytes | None,
        basename: str = PAGE_NAME,
    ) -> bool:
        """Retire the prefixed copy of page `old` if `new` (None: no page) replaces it.

        Called before the write, so the caller saves the retirement with the state
        first: a run killed right after the write leaves a page its rerun finds
        unchanged, and the old copy would otherwise be served for ever. Called
        again after the write, which starts the grace at the real replacement.
        """
        if old is None or old == new:
            return False
        self.retire(f"{os.fspath(directory)}/{prefixed_name(hexdigest_of(old), basename)}")
        return True

    def retire(self, copy: str | Path) -> None:
        """Start (or restart) `copy`'s grace period now."""
        self.state.retired[self._relative(copy)] = self.clock()

    def collect_retired(self, grace: float) -> int:
        """Delete the prefixed copies retired more than `grace` seconds ago that no client needs.

        Kept past the grace: the current copy, and each copy RSTUF signs or may
        soon sign (`Outbox.held_digests`: the state it last confirmed, those in
        flight or uncertain): while RSTUF is behind, its metadata still sends
        clients there. Intermediate versions RSTUF never saw go with their grace.
        A target owed without a record of what RSTUF signs (a state file from
        an older release) keeps every copy until RSTUF confirms it.
        """
        deadline = self.clock() - grace
        box = self.state.outbox
        held = box.held_digests()
        unrecorded = box.owed() - box.signed.keys()
        removed = 0
        for relative, retired_at in list(self.state.retired.items()):
            target = target_of_copy(relative)
            if retired_at > deadline or target in unrecorded:
                continue
            if digest_of_copy(relative) in held.get(target, ()):
                continue
            if self._copy_is_current(relative):
                del self.state.retired[relative]
                continue
            removed += self._delete_copy(relative)
            del self.state.retired[relative]
        return removed

    def _copy_is_current(self, relative: str) -> bool:
        """Whether the copy at `relative` is its page's (the same inode): it stays."""
        copy = self.layout.served_dir / relative
        current = self.layout.served_dir / target_of_copy(relative)
        try:
            return current.exists() and os.path.samefile(copy, current)
        except FileNotFoundError:
            return False

    def _delete_copy(self, relative: str) -> bool:
        """Delete a retired copy (and its directory if that empties); whether it was there."""
        copy = self.layout.served_dir / relative
        try:
            copy.unlink()
        except FileNotFoundError:
            return False
        finally:
            if copy.parent != self.layout.served_dir:
                self._remove_if_empty(copy.parent)
        return True

    def restart_grace(self, superseded: Iterable[tuple[str, str | None]]) -> None:
        """RSTUF confirmed newer states: the copies it signed before get a full grace from now.

        `superseded` pairs each confirmed target with the digest RSTUF signed
        until then (None: not recorded, so every retired copy of it). A client
        that fetched RSTUF's previous metadata may still download them.
        """
        released: dict[str, set[str | None]] = {}
        for target, digest in superseded:
            released.setdefault(target, set()).add(digest)
        if not released:
            return
        now = self.clock()
        for relative in self.state.retired:
            digests = released.get(target_of_copy(relative))
            if digests is not None and (None in digests or digest_of_copy(relative) in digests):
                self.state.retired[relative] = now

    # The few questions the sync asks of the served tree outside this class; a tree in
    # an object store answers them in `pypi_index_mirror.mirror.storage.StoreWriter`.

    def target_exists(self, target: str) -> bool:
        return self.layout.path_of_target(target).exists()

    def target_digest(self, target: str) -> FileDigest:
        """Length and digest of a served target as it is now; FileNotFoundError if none."""
        return digest_file(self.layout.path_of_target(target))

    def any_project(self) -> bool:
        """Whether ``simple/`` holds any project directory."""
        try:
            with os.scandir(self.layout.simple_dir) as entries:
                return any(entry.is_dir() for entry in entries)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def open_target(self, path: str | Path) -> BinaryIO:
        """A served file opened to stream (a root index); FileNotFoundError if none."""
        return open(path, "rb")

    def make_directory(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)

    def unlink_target(self, path: Path) -> None:
        path.unlink()

    def _remove_if_empty(self, directory: Path) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()

    def _relative(self, path: str | Path) -> str:
        """`path` relative to the served tree, posix-style (a prefix cut for our own str paths)."""
        if isinstance(path, str) and path.startswith(self._served_prefix):
            return path[len(self._served_prefix) :]
        return Path(path).relative_to(self.layout.served_dir).as_posix()


def make_directory(path: str) -> None:
    """mkdir, and its parents on the first page of an empty mirror."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
