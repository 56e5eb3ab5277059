"""The mirror on disk: layout, names, atomic writes, hashing and the lock.

Everything here is shared by ``pypi_mirror.py`` and ``generate_csv.py`` so that
each rule (how a name becomes a path, how bytes are hashed for TUF, how a file
is replaced without a reader ever seeing half of it) lives in exactly one place.
Nothing in this module talks to the network.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pypi_index_mirror.ops.cli import EXIT_LOCKED, ToolError

# --- names -----------------------------------------------------------------

# PEP 508 / warehouse's `projects_valid_name` constraint: ASCII letters and
# digits, with `.`, `_` and `-` allowed only inside the name.
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# A directory name must fit the filesystem's 255-byte limit together with the
# 64-hex-digit hash prefix of TUF's consistent-snapshot copies.
MAX_NAME_LENGTH = 150


class InvalidProjectName(ValueError):
    """An upstream project name that must never become a path."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid project name {name!r}: {reason}")
        self.name = name
        self.reason = reason


def normalize_name(name: str) -> str:
    """PEP 503 normalization (no validation: see `project_dir_name`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dir_name(name: str) -> str:
    """Return the normalized name of a valid project name, or raise InvalidProjectName.

    This is the only gate between an upstream string and a path: the result
    contains only ``[a-z0-9-]``, so it can never be ``.``, ``..``, absolute or
    contain a separator.
    """
    if not isinstance(name, str) or not name:
        raise InvalidProjectName(str(name), "empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidProjectName(name[:40] + "...", f"longer than {MAX_NAME_LENGTH} characters")
    if not _VALID_NAME.fullmatch(name):
        raise InvalidProjectName(name, "not a PEP 508 name (ASCII letters, digits, '.', '_', '-')")
    return normalize_name(name)


# --- hashing -----------------------------------------------------------------

TUF_HASH_ALGORITHM = "blake2b-256"
HASH_FACTORIES: dict[str, Callable[[], hashlib._Hash]] = {
    "blake2b-256": lambda: hashlib.blake2b(digest_size=32),
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """Length and hex digest of exactly the bytes a file holds (what TUF signs)."""

    length: int
    algorithm: str
    hexdigest: str


def digest_bytes(data: bytes, algorithm: str = TUF_HASH_ALGORITHM) -> FileDigest:
    return FileDigest(len(data), algorithm, hexdigest_of(data, algorithm))


def hexdigest_of(data: bytes, algorithm: str = TUF_HASH_ALGORITHM) -> str:
    """`data`'s hex digest alone: what names a page's prefixed copy, at every page written."""
    hasher = HASH_FACTORIES[algorithm]()
    hasher.update(data)
    return hasher.hexdigest()


def digest_file(path: Path | str, algorithm: str = TUF_HASH_ALGORITHM) -> FileDigest:
    """Hash a file's bytes in 1 MiB reads (hashlib releases the GIL on these)."""
    hasher = HASH_FACTORIES[algorithm]()
    length = 0
    with open(path, "rb", buffering=0) as handle:  # no second buffer: ~30% more files/s
        while chunk := handle.read(_READ_CHUNK):
            hasher.update(chunk)
            length += len(chunk)
    return FileDigest(length, algorithm, hasher.hexdigest())


# --- layout ------------------------------------------------------------------

# Both scripts' defaults: generate_csv.py must find what pypi_mirror.py wrote. The state
# sits in the working directory, at the top level beside the mirror directory (the layout
# the toolkit is designed around), never in the served tree.
DEFAULT_MIRROR_DIR = Path("pypi-index-mirror")
DEFAULT_STATE_FILE = Path("state.json")
PAGE_NAME = "index.html"
# PEP 691's JSON form of a page, under bandersnatch's name, which existing server configs expect
JSON_PAGE_NAME = "index.v1_json"
PAGE_NAMES = (PAGE_NAME, JSON_PAGE_NAME)  # every form a project page is served in


@dataclass(frozen=True)
class MirrorLayout:
    """Where everything lives under ``--mirror-dir``.

    Only ``pypi_mirror/`` is served. Temp files are made in ``.staging/`` (same
    filesystem, so the final rename is atomic) so the served tree never holds one.
    """

    root: Path

    @property
    def served_dir(self) -> Path:
        return self.root / "pypi_mirror"

    @property
    def simple_dir(self) -> Path:
        return self.served_dir / "simple"

    @property
    def root_page(self) -> Path:
        return self.served_dir / PAGE_NAME

    @property
    def json_root_page(self) -> Path:
        return self.served_dir / JSON_ROOT_TARGET

    @property
    def staging_dir(self) -> Path:
        return self.root / ".staging"

    @property
    def previous_state_file(self) -> Path:
        """Where release 1.1 kept state.json by default; a run moves it to the default once.

        See `safety.locate_state`.
        """
        return self.root / "state.json"

    @property
    def status_file(self) -> Path:
        """How the last run ended (``ops.status``): beside state.json, never served."""
        return self.root / "status.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def marker_file(self) -> Path:
        """The mirror's id, also recorded in its state (see ``mirror.safety``); never served."""
        return self.root / ".mirror-id"

    def project_dir(self, normalized: str) -> Path:
        return self.simple_dir / normalized

    def project_page(self, normalized: str, basename: str = PAGE_NAME) -> Path:
        return self.simple_dir / normalized / basename

    def path_of_target(self, target: str) -> Path:
        return self.served_dir / target


def project_target(normalized: str, basename: str = PAGE_NAME) -> str:
    """The TUF target path of a project page (relative to ``pypi_mirror/``)."""
    return f"simple/{normalized}/{basename}"


ROOT_TARGET = PAGE_NAME
# The JSON root sits where a PEP 691 client asks for it (``/simple/``), as bandersnatch's does.
JSON_ROOT_TARGET = f"simple/{JSON_PAGE_NAME}"


def prefixed_name(hexdigest: str, basename: str = PAGE_NAME) -> str:
    """Name of the consistent-snapshot copy a TUF client downloads."""
    return f"{hexdigest}.{basename}"


def target_of_copy(relative: str) -> str:
    """The target a hash-prefixed copy stands for (``simple/x/<hex>.index.html`` -> its page)."""
    directory, _, filename = relative.rpartition("/")
    basename = filename.partition(".")[2]
    return f"{directory}/{basename}" if directory else basename


def digest_of_copy(relative: str) -> str:
    """The hex digest in a hash-prefixed copy's name (``simple/x/<hex>.index.html`` -> hex)."""
    return relative.rpartition("/")[2].partition(".")[0]


def iter_targets(layout: MirrorLayout, ordered: bool = True) -> Iterator[str]:
    """Yield every TUF target the mirror serves: the roots, then each project's pages.

    Order: ``index.html``, ``simple/index.v1_json``, then the projects sorted
    by name, each with ``index.html`` before ``index.v1_json`` (whichever
    exist). Streams directory entries instead of building a list of 700,000
    paths; sorting needs the 700,000 names at once, so a caller that does not
    need the order (the audit groups pages by hash bin) passes ``ordered=False``.
    """
    for root_target in (ROOT_TARGET, JSON_ROOT_TARGET):
        if layout.path_of_target(root_target).is_file():
            yield root_target
    try:
        entries = os.scandir(layout.simple_dir)
    except FileNotFoundError:
        return
    with entries:
        names: Iterable[str] = (entry.name for entry in entries if entry.is_dir())
        if ordered:
            names = sorted(names)
        simple = os.fspath(layout.simple_dir)  # str joins: Path objects cost 3x here
        for name in names:
            for basename in PAGE_NAMES:
                if os.path.isfile(f"{simple}/{name}/{basename}"):
                    yield project_target(name, basename)


# --- writing -----------------------------------------------------------------


def atomic_write(
    path: Path, data: bytes, staging_dir: Path, prefix: str = ".tmp-", mode: int | None = None
) -> None:
    """Replace `path` with `data` durably, so that readers see the old or the new bytes
    (`atomic_file`). Bulk page writes do not come here: they share one
    `sync_filesystem` per batch."""
    with atomic_file(path, staging_dir, prefix, mode) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_file(
    path: Path, staging_dir: Path, prefix: str = ".tmp-", mode: int | None = None
) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace `path` durably once the block ends, so that
    readers see the old file or the whole new one (a stream: never held in memory).

    The temp file (named `prefix`...) is created in `staging_dir` (same filesystem
    as `path`), fsynced, and renamed over `path`; then the directory is fsynced. If
    the block raises (or is interrupted) the temp file goes and `path` keeps what it
    had. Its permissions are mkstemp's 0600 unless `mode` is given.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=staging_dir, prefix=prefix)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        name_io_error(exc, path)  # a full disk's write(2) names no file
        raise
    fsync_dir(path.parent)


def name_io_error(exc: BaseException, path: str | os.PathLike[str]) -> None:
    """Give an OSError without a file name (write(2), fsync(2) raise one) the file written.

    The error funnel (`ops.cli.failure`) then says where it happened.
    """
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = os.fspath(path)


def readable_mode() -> int:
    """The mode open(2) would give a new file (0666 less the umask), for files others read.

    mkstemp's 0600 would keep out whoever imports the CSV or scrapes the metrics.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_staging(staging_dir: Path) -> int:
    """Delete temp files an interrupted run left behind; return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(staging_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


_libc = None


def sync_filesystem(path: Path) -> None:
    """Make every write on `path`'s filesystem durable with one syncfs(2).

    One call per batch costs far less than an fsync per page; falls back to
    sync(2) where syncfs is not available.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    syncfs = getattr(_libc, "syncfs", None) if _libc else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


# --- the lock ----------------------------------------------------------------


class MirrorLocked(ToolError):
    exit_code = EXIT_LOCKED

    def __init__(self, lock_path: Path, holder: str) -> None:
        super().__init__(
            f"another run holds the mirror lock {lock_path} ({holder}); "
            "wait for it to finish, then retry"
        )
        self.lock_path = lock_path


@contextlib.contextmanager
def mirror_lock(lock_path: Path, read_only: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` or raise MirrorLocked at once.

    flock is released by the kernel when the process dies (even by SIGKILL),
    so a crashed run never leaves a stale lock behind. `read_only` (a dry run)
    creates and writes nothing: it takes a shared lock on the lock file if
    there is one (so it never reads a mirror a sync is changing), else none.
    """
    if read_only:
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            yield
            return
    else:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown pid"
            raise MirrorLocked(lock_path, f"pid {holder}") from None
        if not read_only:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --- test hook -----------------------------------------------------------------

CRASH_AT_ENV = "PYPI_MIRROR_CRASH_AT"


def crash_hook_armed() -> bool:
    """Whether `crash_point` can fire in this process: a hot path asks once, not per page."""
    return bool(os.environ.get(CRASH_AT_ENV))


def crash_point(moment: str, subjects: Collection[str] = ()) -> None:
    """Test hook: SIGKILL this process at the moment ``PYPI_MIRROR_CRASH_AT`` names.

    The crash tests (tests/test_crash.py) set it to ``<moment>`` (the first time
    the run reaches that moment) or ``<moment>@<subject>`` (the first time it
    reaches it for that subject) to prove that a run killed right there loses
    nothing. Moments and their subjects:

    - ``page-temp@<target>``: a page's new bytes are in a temp file, nothing of
      them in place yet (``simple/numpy/index.html``; ``index.html``: the root);
    - ``page-renamed@<target>``: the page is in place, the old copy not yet retired;
    - ``state-save@<why>``: state.json is about to record `why` (``full-sync-started``,
      ``batch-intent``, ``root-intent``, ``run-end``, ``delivered``);
    - ``rstuf-answered@<target>``: RSTUF accepted a request carrying that target,
      its task id not yet saved.

    Inert when the variable is unset.
    """
    spec = os.environ.get(CRASH_AT_ENV)
    if not spec:
        return
    point, _, subject = spec.partition("@")
    if point == moment and (not subject or subject in subjects):
        os.kill(os.getpid(), signal.SIGKILL)
