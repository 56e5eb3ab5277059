"""Where the served tree lives: a local directory (the default) or an object store.

`Storage` is the little a writer, the CSV and the audit need from the place
pages are served from: put bytes atomically with the headers a static server
passes on, read them (whole, or a head or tail for a serial), delete, list
with sizes and ETags, and the mirror's identity marker. Keys are the paths
inside the served tree (``simple/numpy/index.html``), the same layout on disk
and in a bucket, so a mirror can move between them by copying files.

`LocalStorage` keeps today's disk rules (temp file in ``.staging/``, fsync,
rename; the marker beside the served tree). The local sync itself still uses
`mirror.writer.MirrorWriter`, whose hard links and one syncfs per batch are
what make a 700,000-page first sync take minutes; `StoreWriter` is the writer
for a `Storage` that is not a directory (``s3.S3Storage``). One contract test
(tests/test_s3.py) holds `LocalStorage` and `S3Storage` to the same behaviour.

What stays local whatever the storage: ``state.json``, the lock and staging
(the roots are rendered into a staging file before they are put).
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pypi_index_mirror.mirror.safety import (
    EMPTY_JSON_ROOT_SIZE,
    EMPTY_ROOT_SIZE,
    MirrorFacts,
    MirrorMismatch,
)
from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import (
    JSON_PAGE_NAME,
    JSON_ROOT_TARGET,
    PAGE_NAME,
    PAGE_NAMES,
    ROOT_TARGET,
    FileDigest,
    MirrorLayout,
    atomic_write,
    crash_point,
    digest_bytes,
    hexdigest_of,
    prefixed_name,
    project_target,
    target_of_copy,
)
from pypi_index_mirror.mirror.writer import MirrorWriter
from pypi_index_mirror.ops.cli import ToolError
from pypi_index_mirror.upstream.pages import json_page_serial, page_serial

log = logging.getLogger(__name__)

# --- what each object carries -------------------------------------------------------

HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
# A page or a root changes with every release: a cache in front may keep it a minute, as
# serving/nginx.conf says for the tree on disk. A hash-prefixed copy's name is its
# content's blake2b-256, so it never changes: a year, and `immutable` (RFC 8246).
PAGE_CACHE = "public, max-age=60"
COPY_CACHE = "public, max-age=31536000, immutable"
MARKER_KEY = ".mirror-id"  # beside the served tree's keys, never a page: nginx-s3.conf hides it


def is_copy_key(key: str) -> bool:
    """Whether `key` names a hash-prefixed copy (``<64 hex>.index.html`` in its directory)."""
    head, dot, _ = key.rpartition("/")[2].partition(".")
    return bool(dot) and len(head) == 64 and all(c in "0123456789abcdef" for c in head)


def object_headers(key: str) -> tuple[str, str]:
    """(Content-Type, Cache-Control) of the object at `key`: by its form, and copy or not."""
    content_type = JSON_TYPE if key.endswith(JSON_PAGE_NAME) else HTML_TYPE
    return content_type, COPY_CACHE if is_copy_key(key) else PAGE_CACHE


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it."""

    key: str  # the path inside the served tree
    size: int
    etag: str | None  # the store's hex MD5 of the bytes (single-part PUT); None on disk


class StorageUnavailable(ToolError):
    """The store cannot be used at all (no client library, no bucket, no access): exit 1."""


# --- the interface ---------------------------------------------------------------------


class Storage(ABC):
    """The served tree's home. Every method is safe to call from several threads."""

    @abstractmethod
    def describe(self) -> str:
        """Where it is, for messages (a directory, or ``s3://bucket/prefix``)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Replace `key` with `data` atomically, with the headers `object_headers` gives."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes; None if there is none."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """`length` bytes from `start` (a negative `start`: the last -`start` bytes)."""

    @abstractmethod
    def etag(self, key: str) -> str | None:
        """The object's ETag (on disk: its blake2b-256), or None if there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; nothing if there is none."""

    @abstractmethod
    def list(self, prefix: str = "", top_level: bool = False) -> Iterator[StoredObject]:
        """Every object under `prefix` (`top_level`: none below a further ``/``), sorted."""

    @abstractmethod
    def read_marker(self) -> str | None:
        """The mirror id kept with the tree; None if none; MirrorMismatch if damaged."""

    @abstractmethod
    def write_marker(self, mirror_id: str) -> None:
        """Keep `mirror_id` with the tree (atomically)."""

    def exists(self, key: str) -> bool:
        return self.etag(key) is not None

    def close(self) -> None:  # noqa: B027 - optional for a store with connections
        """Release connections."""


def check_marker(text: str, where: str) -> str:
    """A marker's id, or MirrorMismatch naming `where` for a damaged one (as on disk)."""
    text = text.strip()
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    raise MirrorMismatch(
        f"{where} is damaged ({text[:40]!r}): restore it from a backup, or delete it and "
        "run once with --full-check to check the mirror and mark it again"
    )


class LocalStorage(Storage):
    """The served tree in a directory, by the disk's rules (mirror_store.atomic_write)."""

    def __init__(self, layout: MirrorLayout) -> None:
        self.layout = layout
        self.served = os.fspath(layout.served_dir)

    def describe(self) -> str:
        return self.served

    def _path(self, key: str) -> str:
        return f"{self.served}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = Path(self._path(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, self.layout.staging_dir, mode=0o644)

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as handle:
                if start < 0:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() + start))
                else:
                    handle.seek(start)
                return handle.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def etag(self, key: str) -> str | None:
        data = self.get(key)
        return None if data is None else hexdigest_of(data)

    def delete(self, key: str) -> None:
        path = Path(self._path(key))
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        with contextlib.suppress(OSError):  # not empty, or the served tree itself
            if path.parent != self.layout.served_dir:
                path.parent.rmdir()

    def list(self, prefix: str = "", top_level: bool = False) -> Iterator[StoredObject]:
        keys: list[str] = []
        for directory, dirs, files in os.walk(self.served):
            if top_level:
                dirs.clear()
            relative = os.path.relpath(directory, self.served)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            keys.extend(base + name for name in files if (base + name).startswith(prefix))
        for key in sorted(keys):
            with contextlib.suppress(FileNotFoundError):
                yield StoredObject(key, os.stat(self._path(key)).st_size, None)

    def read_marker(self) -> str | None:
        try:
            text = self.layout.marker_file.read_bytes()[:100].decode("ascii", "replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return check_marker(text, os.fspath(self.layout.marker_file))

    def write_marker(self, mirror_id: str) -> None:
        atomic_write(
            self.layout.marker_file,
            f"{mirror_id}\n".encode(),
            staging_dir=self.layout.staging_dir,
            prefix=".mirror-id.tmp-",
        )


def open_storage(url: str | None, layout: MirrorLayout, retries: int, backoff: float) -> Storage:
    """The storage `--storage` names: ``s3://BUCKET[/PREFIX]``; None or "": the directory.

    boto3 is imported only here, when a bucket is named (``ops.options`` has checked
    the URL's form). Raises StorageUnavailable without boto3, or for a bucket
    that is missing or not ours, or without credentials.
    """
    if not url:
        return LocalStorage(layout)
    try:
        from pypi_index_mirror.mirror.s3 import S3Storage  # boto3: only for a bucket
    except ImportError as exc:
        raise StorageUnavailable(
            f"--storage {url} needs boto3 ({exc}): pip install 'boto3>=1.28' "
            "(or the s3 extra: pip install 'pypi-index-mirror[s3]')"
        ) from None

    return S3Storage.from_url(url, retries=retries, backoff=backoff)


def is_local(storage: Storage | None) -> bool:
    return storage is None or isinstance(storage, LocalStorage)


# --- what a sync reads first ------------------------------------------------------------


def storage_facts(layout: MirrorLayout, storage: Storage) -> MirrorFacts:
    """`safety.read_mirror_facts` for a tree in a store: the marker, the root, a page.

    Three requests: the marker, the root's head (or the JSON root's), and a
    listing of one key under ``simple/``.
    """
    root_size = None
    for root, empty in ((ROOT_TARGET, EMPTY_ROOT_SIZE), (JSON_ROOT_TARGET, EMPTY_JSON_ROOT_SIZE)):
        found = next(storage.list(root), None)
        if found is not None and found.key == root:
            root_size, empty_size = found.size, empty
            break
    pages = any_project(storage)
    return MirrorFacts(
        directory=layout.root.resolve(),
        exists=layout.root.is_dir(),
        marker=storage.read_marker(),
        served_tree=root_size is not None or pages,
        root_index=root_size is not None,
        root_lists_projects=root_size is not None and root_size > empty_size,
        project_pages=pages,
    )


def any_project(storage: Storage) -> bool:
    """Whether the store holds any object under ``simple/`` but the JSON root."""
    return any(stored.key != JSON_ROOT_TARGET for stored in storage.list("simple/"))


# --- the writer for a store ---------------------------------------------------------------


class StoreWriter(MirrorWriter):
    """`MirrorWriter`'s rules over a `Storage`: copy before page, roots after pages, grace.

    An object PUT is atomic, so a page needs no temp file: its hash-prefixed
    copy is put first (a TUF client may be sent there as soon as RSTUF signs
    the page), then the page. A copy cannot be a hard link, so it is a second
    object with the same bytes (and, in S3, the same ETag, which is how the
    audit and the CSV tell which copy is the page's). Paths handed in by the
    sync (under the layout's served directory) are turned into keys.
    """

    def __init__(
        self,
        layout: MirrorLayout,
        state: State,
        storage: Storage,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(layout, state, clock)
        self.storage = storage

    def key(self, path: str | Path) -> str:
        return self._relative(path)

    # reading

    def read_page(self, name: str, basename: str = PAGE_NAME) -> bytes | None:
        return self.storage.get(project_target(name, basename))

    def local_serial(self, name: str, basename: str = PAGE_NAME) -> int | None:
        key = project_target(name, basename)
        if basename == JSON_PAGE_NAME:
            head = self.storage.get_range(key, 0, 256)
            return None if head is None else json_page_serial(head)
        tail = self.storage.get_range(key, -64, 64)
        return None if tail is None else page_serial(tail)

    def local_projects(self) -> Iterator[str]:
        """Projects with a page in any form, from one listing (sorted: grouped by project)."""
        last = None
        for stored in self.storage.list("simple/"):
            parts = stored.key.split("/")
            if len(parts) == 3 and parts[2] in PAGE_NAMES and parts[1] != last:
                last = parts[1]
                yield last

    def has_page(self, name: str, basename: str | None = None) -> bool:
        names = PAGE_NAMES if basename is None else (basename,)
        return any(self.storage.exists(project_target(name, page)) for page in names)

    def target_exists(self, target: str) -> bool:
        return self.storage.exists(target)

    def target_digest(self, target: str) -> FileDigest:
        data = self.storage.get(target)
        if data is None:
            raise FileNotFoundError(2, "no such object", f"{self.storage.describe()}{target}")
        return digest_bytes(data)

    def any_project(self) -> bool:
        return any_project(self.storage)

    def open_target(self, path: str | Path) -> BinaryIO:
        data = self.storage.get(self.key(path))
        if data is None:
            raise FileNotFoundError(2, "no such object", f"{self.storage.describe()}/{path}")
        return io.BytesIO(data)

    def root_digest(self, path: Path | None = None) -> str | None:
        data = self.storage.get(self.key(path or self.layout.root_page))
        return None if data is None else hexdigest_of(data)

    # writing

    def store(
        self, directory: str | Path, body: bytes, old: bytes | None, basename: str = PAGE_NAME
    ) -> bool:
        directory = os.fspath(directory)
        digest = hexdigest_of(body)
        if old == body:
            self.ensure_copy(directory, digest, basename)
            return False
        self._put_page(directory, body, digest, basename)
        self.retire_replaced(directory, old, body, basename)
        return True

    def install(
        self, directory: str | Path, temp: str, digest: str, basename: str = PAGE_NAME
    ) -> None:
        """Put a staged root (or page): its copy first, then itself; the temp goes."""
        try:
            with open(temp, "rb") as handle:
                body = handle.read()
            self._put_page(os.fspath(directory), body, digest, basename)
        finally:
            self.discard(temp)

    def _put_page(self, directory: str, body: bytes, digest: str, basename: str) -> None:
        copy = self.key(f"{directory}/{prefixed_name(digest, basename)}")
        self._crash_at("page-temp", copy)
        self.storage.put(copy, body)
        self.storage.put(target_of_copy(copy), body)
        self._crash_at("page-renamed", copy)
        if self.state.retired:
            self.state.retired.pop(copy, None)

    def _crash_at(self, moment: str, copy: str) -> None:
        if self._crash_armed:
            crash_point(moment, (target_of_copy(copy),))

    def ensure_copy(self, directory: str | Path, digest: str, basename: str = PAGE_NAME) -> None:
        """Put an unchanged page's copy again if a killed run or damage lost or changed it."""
        copy = self.key(os.path.join(directory, prefixed_name(digest, basename)))
        page = target_of_copy(copy)
        page_etag = self.storage.etag(page)
        if page_etag is not None and self.storage.etag(copy) == page_etag:
            return
        body = self.storage.get(page)
        if body is not None and hexdigest_of(body) == digest:
            self.storage.put(copy, body)

    def make_directory(self, directory: str | Path) -> None:
        """Nothing: a store has no directories."""

    def remove_page(self, name: str, basename: str = PAGE_NAME) -> None:
        self.remove_file(self.layout.project_dir(name), basename)

    def remove_file(self, directory: Path, basename: str) -> bool:
        key = self.key(directory / basename)
        body = self.storage.get(key)
        if body is None:
            return False
        self.storage.delete(key)
        self.retire(directory / prefixed_name(hexdigest_of(body), basename))
        return True

    def unlink_target(self, path: Path) -> None:
        self.storage.delete(self.key(path))

    def _copy_is_current(self, relative: str) -> bool:
        """Whether the page `relative` (a copy) stands for has its bytes (same ETag)."""
        current = self.storage.etag(target_of_copy(relative))
        return current is not None and current == self.storage.etag(relative)

    def _delete_copy(self, relative: str) -> bool:
        self.storage.delete(relative)
        return True

    def _remove_if_empty(self, directory: Path) -> None:
        """Nothing: a store has no directories."""


# --- what the CSV and the audit read: one listing ---------------------------------------------


@dataclass(frozen=True)
class ListedPage:
    """A page as the store's listing shows it, with the copies beside it."""

    target: str
    size: int
    etag: str | None
    copies: dict[str, StoredObject]  # blake2b-256 in the copy's name -> the copy

    def digest(self) -> str | None:
        """The page's blake2b-256 when a copy holds its bytes (the same ETag), else None."""
        if self.etag is None:
            return None
        for digest, copy in self.copies.items():
            if copy.etag == self.etag and copy.size == self.size:
                return digest
        return None


def _project_of(key: str) -> str | None:
    """The project a key under ``simple/`` belongs to; None for the JSON root and its copies."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "simple" else None


def _aside(stored: StoredObject, aside: dict[str, StoredObject] | None) -> None:
    if aside is not None:
        aside[stored.key] = stored


def iter_project_pages(
    storage: Storage, aside: dict[str, StoredObject] | None = None
) -> Iterator[list[ListedPage]]:
    """Each project's pages (index.html, then index.v1_json) with their copies, by name.

    One ListObjectsV2 stream over ``simple/`` (1,000 keys a request; a page
    and its copy are two). The listing's order is the keys' (``a-b/`` before
    ``a/``, since ``-`` sorts before ``/``), the mirror's order is the names'
    (``iter_targets``): a name is held back only while an unlisted name that
    sorts before it may still come, which is only a ``-``-prefix of the name
    being listed (``django`` after every ``django-*``).
    """
    held: list[tuple[str, list[ListedPage]]] = []

    def pages_of(name: str, objects: list[StoredObject]) -> list[ListedPage]:
        copies: dict[str, dict[str, StoredObject]] = {}
        pages: dict[str, StoredObject] = {}
        for stored in objects:
            basename = stored.key.rpartition("/")[2]
            if basename in PAGE_NAMES:
                pages[basename] = stored
            elif is_copy_key(stored.key):
                digest, _, form = basename.partition(".")
                copies.setdefault(form, {})[digest] = stored
        return [
            ListedPage(project_target(name, form), found.size, found.etag, copies.get(form, {}))
            for form, found in sorted(pages.items())  # index.html < index.v1_json
        ]

    def settle(listed: str | None) -> Iterator[list[ListedPage]]:
        # the listed name, or its first '-'-prefix: nothing unlisted sorts before that
        bound = None if listed is None else listed.partition("-")[0]
        while held and (bound is None or held[0][0] < bound):
            _name, pages = heapq.heappop(held)
            if pages:
                yield pages

    name: str | None = None
    objects: list[StoredObject] = []
    for stored in storage.list("simple/"):
        project = _project_of(stored.key)
        if project is None:
            _aside(stored, aside)  # the JSON root and its copies
            continue
        if project != name:
            if name is not None:
                heapq.heappush(held, (name, pages_of(name, objects)))
                yield from settle(project)
            name, objects = project, []
        objects.append(stored)
    if name is not None:
        heapq.heappush(held, (name, pages_of(name, objects)))
    yield from settle(None)


def root_digests(storage: Storage) -> Iterator[tuple[str, int, str]]:
    """(target, length, blake2b-256) of each root the store holds: HTML, then JSON.

    Two GETs: a root is one object, and its copy's name is not found without
    listing all of ``simple/`` first.
    """
    for target in (ROOT_TARGET, JSON_ROOT_TARGET):
        data = storage.get(target)
        if data is not None:
            yield target, len(data), hexdigest_of(data)


def iter_stored_digests(storage: Storage) -> Iterator[tuple[str, int, str]]:
    """(target, length, blake2b-256) of every served page, in `iter_targets`'s order.

    A page's digest is its copy's name when the copy has its ETag and size;
    a page without such a copy (damaged, or an interrupted run) is read and
    hashed (a GET).
    """
    yield from root_digests(storage)
    for pages in iter_project_pages(storage):
        for page in pages:
            digest = page.digest()
            if digest is None:
                data = storage.get(page.target)
                if data is None:
                    continue  # deleted since the listing
                yield page.target, len(data), hexdigest_of(data)
            else:
                yield page.target, page.size, digest


def audit_listing(storage: Storage) -> Iterator[tuple[str, int, str, dict[str, int]]]:
    """(target, length, blake2b-256, {copy digest: copy length}) of every served page.

    What the audit compares with TUF's targets, from the listing: two LISTs
    per 1,000 pages, one for the top level (the HTML root's copies), and a
    GET for each root and for each page no copy holds the bytes of. A copy
    with the page's ETag holds its bytes; any other copy is taken for the
    digest its name says (the writer names copies so; tampering with a copy
    in place is not seen without reading it).
    """
    aside: dict[str, StoredObject] = {}
    for pages in iter_project_pages(storage, aside):
        for page in pages:
            digest = page.digest()
            size = page.size
            if digest is None:
                data = storage.get(page.target)
                if data is None:
                    continue
                size, digest = len(data), hexdigest_of(data)
            copies = {name: copy.size for name, copy in page.copies.items()}
            yield page.target, size, digest, copies
    top = {stored.key: stored for stored in storage.list("", top_level=True)}
    for target, length, digest in root_digests(storage):
        found = top if target == ROOT_TARGET else aside
        copies = {}
        for key, stored in found.items():
            if is_copy_key(key) and target_of_copy(key) == target:
                copies[key.rpartition("/")[2].partition(".")[0]] = stored.size
        yield target, length, digest, copies
