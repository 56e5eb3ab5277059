"""The audit: every page the mirror serves held against the targets RSTUF's TUF metadata signs.

The invariant the mirror exists for is *every page a client downloads is the
page TUF signs*. This module checks it the way a TUF client would see it:

1. Read RSTUF's published metadata from its base URL (the directory RSTUF's
   storage is served from), trusting only a given root file, and verify the
   whole chain with python-tuf on every run (no client cache survives between
   audits): ``tuf.ngclient.Updater.refresh()`` rotates the root (``N+1.root.json``
   until 404) and verifies timestamp, snapshot and top-level targets; then
   every hash bin the targets role delegates to succinctly (TAP 15; RSTUF
   names them ``bins-<hex>``) is fetched as ``<version>.bins-<hex>.json`` and
   verified with python-tuf's public API (``Metadata``, ``MetaFile``,
   ``Targets.verify_delegate``), in the client workflow's order: length and
   hashes where snapshot lists them, the delegator's signature threshold, the
   version snapshot names, expiry.
2. Compare each bin's targets with the pages on disk that hash into the same
   bin (``mirror_store.iter_targets``), and with the hash-prefixed copy
   ``<dir>/<first hash>.<basename>`` a client with consistent snapshots
   downloads. Each difference is one ``KIND PATH`` line:

   - ``unsigned``: a page on disk that no target signs;
   - ``mismatch``: a page whose length or hashes differ from its target;
   - ``missing``: a target with no page on disk;
   - ``copy-missing``: a target whose hash-prefixed copy is missing or holds
     other bytes (what a TUF client actually downloads fails).

It streams: bins are fetched by a few threads (one urllib3 pool each) a
window ahead, and each group of bins is verified and compared in a worker
process (``parallel``, the pool ``generate_csv.py`` hashes with) together with
the pages that hash into it; only the page paths (packed per bin) and the
bins in flight are held at once. At 700,000 targets in 16,384 bins see the
docs/audit.md for time and memory.

Layers, as in python-tuf's ngclient: `MetadataFetcher` only moves bytes;
the pure functions verify bins and compare facts; `read_disk_facts` reads the
disk; `audit` orchestrates. Errors that stop the audit are `AuditError`s whose
one-line message names what failed (which metadata, which URL).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib import parse

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, SuccinctRoles, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import CanonicalJSONSerializer
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from pypi_index_mirror.http.environment import (
    HttpEnvironment,
    read_environment,
)
from pypi_index_mirror.http.retry import (
    Retryable,
    RetryPolicy,
    call_with_retries,
    retry_after_of,
)
from pypi_index_mirror.mirror.store import (
    HASH_FACTORIES,
    TUF_HASH_ALGORITHM,
    MirrorLayout,
    digest_file,
    iter_targets,
)
from pypi_index_mirror.ops.cli import ToolError, UsageError
from pypi_index_mirror.sync.parallel import make_executor, ordered_map, usable_cpus

if TYPE_CHECKING:
    from pypi_index_mirror.ops.settings import Config

log = logging.getLogger(__name__)

UNSIGNED = "unsigned"
MISMATCH = "mismatch"
MISSING = "missing"
COPY_MISSING = "copy-missing"
KINDS = (UNSIGNED, MISMATCH, MISSING, COPY_MISSING)

# A group of bins handed to one worker holds about this many pages and targets:
# big enough that the pool's per-task cost (~0.3 ms in the parent) stays small
# next to hashing, small enough that every worker gets work on a small mirror.
GROUP_ITEMS = 256
GROUP_MAX_BINS = 64
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AuditConfig:
    """What one audit is told; seconds and bytes in the names or comments."""

    metadata_url: str  # the directory RSTUF's storage is served from
    trusted_root: Path  # the only metadata trusted without verification
    fetch_workers: int = 8  # threads fetching bins, one HTTP session each
    hash_workers: int = field(default_factory=usable_cpus)  # processes verifying and hashing
    executor: str = "processes"  # or "threads" (parallel.EXECUTORS)
    connect_timeout: float = 10.0
    timeout: float = 60.0  # read timeout of one request
    retries: int = 3  # per request, on connection errors, 429 and 5xx
    backoff: float = 0.5  # first retry delay, doubled each retry
    max_root_bytes: int = 512 << 10
    max_timestamp_bytes: int = 64 << 10
    max_snapshot_bytes: int = 64 << 20  # 16,384 bins are listed in it
    max_targets_bytes: int = 64 << 20  # top-level targets and each bin
    # the time metadata expiry is judged against (injectable for tests)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def audit_settings(config: Config) -> AuditConfig:
    """The audit's settings from the run's (its timeouts, retries and fetch threads)."""
    if config.tuf_metadata_url is None or config.tuf_root is None:
        raise UsageError("--tuf-metadata-url and --tuf-root are needed")
    return AuditConfig(
        metadata_url=config.tuf_metadata_url,
        trusted_root=config.tuf_root,
        fetch_workers=config.workers,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
        retries=config.retries,
        backoff=config.backoff,
    )


# --- errors --------------------------------------------------------------------------


class AuditError(ToolError):
    """The audit cannot run; the message is one line that names what failed (exit 1)."""


class TrustedRootUnusable(AuditError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"trusted root {path}: {reason}")
        self.path, self.reason = path, reason


class MetadataUnreachable(AuditError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"TUF metadata unreachable: {reason}")
        self.reason = reason

    def __reduce__(self):  # may cross a process boundary
        return (type(self), (self.reason,))


class MetadataRejected(AuditError):
    """Metadata failed verification: `problem` is e.g. 'bad signature', 'expired'."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"TUF metadata rejected: {problem}: {detail}")
        self.problem, self.detail = problem, detail

    def __reduce__(self):  # raised in worker processes
        return (type(self), (self.problem, self.detail))


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "no detail"


def rejection(exc: Exception) -> AuditError:
    """The AuditError for an error python-tuf raised while verifying or downloading."""
    detail = _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return MetadataRejected("too large", detail)
    if isinstance(exc, tuf_errors.DownloadError):
        cause = exc.__cause__
        if cause is not None and str(cause) and str(cause) not in detail:
            detail = f"{detail}: {_one_line(str(cause))}"
        return MetadataUnreachable(detail)
    problems: tuple[tuple[type[Exception], str], ...] = (
        (tuf_errors.UnsignedMetadataError, "bad signature"),
        (tuf_errors.ExpiredMetadataError, "expired"),
        (tuf_errors.BadVersionNumberError, "wrong version"),
        (tuf_errors.LengthOrHashMismatchError, "length or hashes differ from snapshot"),
    )
    for kind, problem in problems:
        if isinstance(exc, kind):
            return MetadataRejected(problem, detail)
    return MetadataRejected("invalid", detail)


# --- records ---------------------------------------------------------------------------


class SignedTarget(NamedTuple):
    """What TUF signs for one path: its length and hashes, in the metadata's order."""

    length: int
    hashes: tuple[tuple[str, str], ...]  # (algorithm, hex digest); never empty

    @property
    def copy_digest(self) -> str:
        """The hex digest a consistent-snapshot client prefixes to the file name: the first."""
        return self.hashes[0][1]


class FileFacts(NamedTuple):
    """What was read from one file on disk."""

    length: int
    hashes: dict[str, str]  # algorithm -> hex digest, for the algorithms asked for


class DiskFacts(NamedTuple):
    """What was read from disk for one target path."""

    page: FileFacts | None  # None: no regular file at the path
    copy: FileFacts | None  # the copy named by the target's first hash; None: none


NO_FILE = DiskFacts(None, None)


class Difference(NamedTuple):
    kind: str  # one of KINDS
    path: str
    signed: SignedTarget | None = None  # what the metadata signs for `path`, if anything

    def line(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass
class GroupReport:
    """What one worker found in its group of bins."""

    differences: list[Difference] = field(default_factory=list)
    targets: int = 0
    misplaced: list[str] = field(default_factory=list)  # targets in a bin not theirs


@dataclass
class AuditReport:
    """The whole audit's counts; `line()` is its summary."""

    targets: int = 0
    pages: int = 0
    bins: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    misplaced: int = 0
    elapsed: float = 0.0

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        counts = " ".join(f"{kind}={self.counts[kind]}" for kind in KINDS)
        return (
            f"summary targets={self.targets} pages={self.pages} bins={self.bins} {counts} "
            f"elapsed={self.elapsed:.1f}s"
        )


# --- pure functions --------------------------------------------------------------------


def copy_path(path: str, hexdigest: str) -> str:
    """The hash-prefixed name a TUF client downloads `path` from (consistent snapshots)."""
    directory, slash, basename = path.rpartition("/")
    return f"{directory}{slash}{hexdigest}.{basename}"


def is_safe_target(path: str) -> bool:
    """Whether `path` names a file inside the served tree (signed paths are still input)."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def matches(target: SignedTarget, facts: FileFacts) -> bool:
    """Whether the file has the target's length and every hash it lists.

    A hash whose algorithm was not computed (one this tool cannot compute) does
    not match: the mirror cannot vouch for it.
    """
    if facts.length != target.length:
        return False
    return all(facts.hashes.get(algorithm) == digest for algorithm, digest in target.hashes)


def differences(path: str, target: SignedTarget | None, disk: DiskFacts) -> list[Difference]:
    """The differences of one path. A missing page is only `missing`: nothing else to compare."""
    if target is None:
        return [Difference(UNSIGNED, path)] if disk.page is not None else []
    if disk.page is None:
        return [Difference(MISSING, path, target)]
    found = []
    if not matches(target, disk.page):
        found.append(Difference(MISMATCH, path, target))
    if disk.copy is None or not matches(target, disk.copy):
        found.append(Difference(COPY_MISSING, path, target))
    return found


def compare(
    signed: Mapping[str, SignedTarget], on_disk: Mapping[str, DiskFacts]
) -> list[Difference]:
    """Every difference between signed targets and what was read from disk, sorted by path.

    A path absent from `on_disk` has no file.
    """
    found = []
    for path in sorted(signed.keys() | on_disk.keys()):
        found.extend(differences(path, signed.get(path), on_disk.get(path, NO_FILE)))
    return found


def signed_targets(targets: Targets) -> dict[str, SignedTarget]:
    """The (path -> SignedTarget) of a verified targets role."""
    return {
        path: SignedTarget(info.length, tuple(info.hashes.items()))
        for path, info in targets.targets.items()
    }


def verify_bin(
    data: bytes,
    role: str,
    meta: MetaFile,
    delegator: Targets,
    reference_time: datetime,
) -> Targets:
    """Verify one delegated bin's bytes as a TUF client does; return its signed part.

    Checks, in the client workflow's order: length and hashes against the
    snapshot's entry (when it lists them), that it is targets metadata, the
    delegator's signature threshold for `role`, the version snapshot names,
    expiry. Raises MetadataRejected.
    """
    try:
        meta.verify_length_and_hashes(data)
        metadata = parse_metadata(data, role)
        if metadata.signed.type != Targets.type:
            raise tuf_errors.RepositoryError(
                f"{role}: expected targets metadata, got {metadata.signed.type!r}"
            )
        delegator.verify_delegate(role, signed_payload(metadata.signed), metadata.signatures)
        if metadata.signed.version != meta.version:
            raise tuf_errors.BadVersionNumberError(
                f"expected {role} v{meta.version}, got v{metadata.signed.version}"
            )
        if metadata.signed.is_expired(reference_time):
            raise tuf_errors.ExpiredMetadataError(
                f"{role} expired at {metadata.signed.expires:%Y-%m-%dT%H:%M:%SZ}"
            )
    except tuf_errors.RepositoryError as exc:
        raise rejection(exc) from None
    except ValueError as exc:  # e.g. the delegator does not delegate `role`
        raise MetadataRejected("invalid", f"{role}: {_one_line(str(exc))}") from None
    if metadata.signed.delegations is not None:
        raise MetadataRejected(
            "unsupported delegation",
            f"{role} delegates further; this audit reads one level of hash bins, as RSTUF "
            "publishes",
        )
    return metadata.signed


def _no_float(text: str) -> object:
    raise ValueError(f"{text}: canonical JSON has integers only")


def parse_metadata(data: bytes, role: str) -> Metadata[Targets]:
    """Deserialize metadata as python-tuf's JSON deserializer does, refusing non-integer numbers.

    Canonical JSON (what TUF signs) has no floats, NaN or infinities, so
    python-tuf can never verify metadata holding one; refusing them here keeps
    `signed_payload`'s shortcut exact. Raises DeserializationError.
    """
    try:
        document = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
        return Metadata.from_dict(document)
    except Exception as exc:  # as python-tuf's JSONDeserializer: any failure is bad data
        raise DeserializationError(f"{role}: not TUF metadata ({_one_line(str(exc))})") from None


def signed_payload(signed: Targets) -> bytes:
    """The canonical JSON bytes of `signed` that signatures cover (``Metadata.signed_bytes``).

    securesystemslib's canonical encoder is pure Python: at 700,000 targets it
    was a third of the audit's CPU. For data without floats (`parse_metadata`
    refuses them) and without a backslash or control character in any string,
    canonical JSON (OLPC: keys sorted, no whitespace, only '\\' and '"'
    escaped, UTF-8) is byte for byte what ``json.dumps(sort_keys=True)`` with
    compact separators writes; anything else takes python-tuf's own encoder.
    """
    try:
        text = json.dumps(
            signed.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        if "\\" not in text:  # json escapes control characters, canonical JSON does not
            return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        pass
    return CanonicalJSONSerializer().serialize(signed)


def split_misplaced(
    targets: dict[str, SignedTarget], role: str, succinct: SuccinctRoles
) -> tuple[dict[str, SignedTarget], list[str]]:
    """Separate the targets a client can find in `role` from those it never looks for there.

    A client looks a path up only in the bin its SHA-256 names, so a target
    listed in another bin signs nothing a client can download.
    """
    misplaced = [path for path in targets if succinct.get_role_for_target(path) != role]
    for path in misplaced:
        del targets[path]
    return targets, misplaced


# --- the disk (runs in the workers) --------------------------------------------------------


def _read_file(path: str, algorithms: Iterable[str]) -> tuple[os.stat_result, FileFacts] | None:
    """Stat and hash a regular file; None if there is none (a directory counts as none)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    hashes, length = {}, info.st_size
    for algorithm in algorithms:
        digest = digest_file(path, algorithm)
        hashes[algorithm], length = digest.hexdigest, digest.length
    return info, FileFacts(length, hashes)


def read_disk_facts(served_dir: str, path: str, target: SignedTarget | None) -> DiskFacts:
    """Read what the comparison needs for `path`: its page and, if signed, its copy.

    An unsigned page is only stat'ed (nothing to compare its bytes with). The
    copy is the file named by the target's first hash; when it is the page's
    own inode (the mirror hard-links them) it is not read twice.
    """
    if not is_safe_target(path):
        return NO_FILE
    if target is None:
        found = _read_file(f"{served_dir}/{path}", ())
        return DiskFacts(found[1] if found else None, None)
    algorithms = {TUF_HASH_ALGORITHM}
    algorithms.update(a for a, _ in target.hashes if a in HASH_FACTORIES)
    found = _read_file(f"{served_dir}/{path}", sorted(algorithms))
    page_info, page = found if found else (None, None)
    copy_file = f"{served_dir}/{copy_path(path, target.copy_digest)}"
    try:
        copy_info = os.stat(copy_file)
    except (FileNotFoundError, NotADirectoryError):
        return DiskFacts(page, None)
    if page_info is not None and os.path.samestat(copy_info, page_info):
        return DiskFacts(page, page)
    copy = _read_file(copy_file, sorted(algorithms))
    return DiskFacts(page, copy[1] if copy else None)


class Listed(NamedTuple):
    """A page as a bucket's listing shows it (``--storage``): no byte of it is read here."""

    length: int
    digest: str  # blake2b-256
    # the digest in each copy's name -> the copy's length; None: only the page's own copy
    # (the usual case, kept as None: 700,000 pages are held at once)
    copies: dict[str, int] | None


def listed_disk_facts(listed: Listed | None, target: SignedTarget | None) -> DiskFacts:
    """`read_disk_facts` from a listing: the page's blake2b-256, and the copy the target names.

    Only blake2b-256 is known (the mirror names copies by it, and it is all
    the mirror sends RSTUF); a target that lists another hash does not match.
    """
    if listed is None:
        return NO_FILE
    page = FileFacts(listed.length, {TUF_HASH_ALGORITHM: listed.digest})
    if target is None:
        return DiskFacts(FileFacts(listed.length, {}), None)
    copies = listed.copies if listed.copies is not None else {listed.digest: listed.length}
    length = copies.get(target.copy_digest)
    if length is None:
        return DiskFacts(page, None)
    return DiskFacts(page, FileFacts(length, {TUF_HASH_ALGORITHM: target.copy_digest}))


class BinWork(NamedTuple):
    """One bin's share of the audit, as handed to a worker."""

    role: str
    meta: MetaFile | None  # None: the top-level targets' own (already verified) targets
    data: bytes | None  # the bin's metadata as fetched
    pages: bytes  # the pages on disk that hash into this bin, packed (`unpack_paths`)
    top_level: dict[str, SignedTarget]  # top-level targets in this bin: a client finds these first


@functools.lru_cache(maxsize=4)
def _delegator(targets_bytes: bytes) -> tuple[Targets, SuccinctRoles | None]:
    """Parse the verified top-level targets once per worker (they are sent as bytes)."""
    targets = Metadata[Targets].from_bytes(targets_bytes).signed
    delegations = targets.delegations
    return targets, delegations.succinct_roles if delegations else None


def audit_group(
    served_dir: str | dict[str, Listed],
    targets_bytes: bytes,
    reference_time: datetime,
    group: tuple[BinWork, ...],
) -> GroupReport:
    """Verify a group of bins and compare each with its pages on disk (runs in a worker).

    `targets_bytes` is the top-level targets metadata the parent verified.
    Raises MetadataRejected (a bin fails verification) or OSError (a page
    cannot be read).
    """
    delegator, succinct = _delegator(targets_bytes)
    report = GroupReport()
    for work in group:
        if work.data is None or work.meta is None or succinct is None:
            signed: dict[str, SignedTarget] = {}
        else:
            verified = verify_bin(work.data, work.role, work.meta, delegator, reference_time)
            signed, misplaced = split_misplaced(signed_targets(verified), work.role, succinct)
            report.misplaced.extend(misplaced)
        signed.update(work.top_level)
        paths = set(unpack_paths(work.pages)) | signed.keys()
        if isinstance(served_dir, dict):  # a bucket's listing (--storage)
            on_disk = {p: listed_disk_facts(served_dir.get(p), signed.get(p)) for p in paths}
        else:
            on_disk = {p: read_disk_facts(served_dir, p, signed.get(p)) for p in paths}
        report.differences.extend(compare(signed, on_disk))
        report.targets += len(signed)
    return report


# --- the network -----------------------------------------------------------------------------


class MetadataFetcher(FetcherInterface):
    """Moves bytes only (python-tuf's fetcher interface), over one urllib3 pool.

    Every request has a (connect, read) timeout and this tool's User-Agent;
    connection errors, 429 and 5xx are retried with backoff (GETs of
    metadata are idempotent); a 4xx is final (a 404 ends the root rotation).
    Each answer is read with the size cap python-tuf passes (``max_length``).
    urllib3 rather than requests: 16,384 bins are 16,384 requests, and
    requests' per-request machinery cost 2.3 ms of CPU each against 0.85 ms
    (measured on loopback). Proxy, CA bundle and User-Agent come from the
    run's `HttpEnvironment`, as for every other client (the process
    environment's, read here, without one).
    """

    CHUNK = 1 << 16

    def __init__(
        self,
        config: AuditConfig,
        sleep: Callable[[float], None] = time.sleep,
        environment: HttpEnvironment | None = None,
    ) -> None:
        self.config = config
        self.sleep = sleep
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.timeout)
        environment = environment if environment is not None else read_environment()
        self.pool = environment.urllib3_pool(config.metadata_url)

    def close(self) -> None:
        self.pool.clear()

    def _fetch(self, url: str) -> Iterator[bytes]:
        policy = RetryPolicy(self.config.retries, self.config.backoff, self.sleep)
        try:
            return call_with_retries(lambda: self._attempt(url), policy, url, log, logging.INFO)
        except _Transient as exc:  # retries spent: the error python-tuf's callers know
            raise exc.final from None

    def _attempt(self, url: str) -> Iterator[bytes]:
        """One GET; raises _Transient (worth another try) or DownloadHTTPError (final)."""
        try:
            response = self.pool.request(
                "GET", url, preload_content=False, timeout=self.timeout, retries=False
            )
        except urllib3.exceptions.NewConnectionError as exc:  # a TimeoutError to urllib3
            raise _Transient(tuf_errors.DownloadError(f"{url}: {_reason(exc)}")) from None
        except urllib3.exceptions.TimeoutError:
            raise _Transient(tuf_errors.SlowRetrievalError(f"{url}: timed out")) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _Transient(tuf_errors.DownloadError(f"{url}: {_reason(exc)}")) from None
        status = response.status
        if status < 400:
            return self._chunks(url, response)
        hint = retry_after_of(status, response.headers)
        response.close()
        final = tuf_errors.DownloadHTTPError(f"{url} answered HTTP {status}", status)
        if status in _TRANSIENT_STATUS:
            raise _Transient(final, hint)
        raise final

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        complete = False
        try:
            yield from response.stream(self.CHUNK)
            complete = True
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"{url}: body cut off: {_reason(exc)}") from None
        finally:
            if complete:
                response.release_conn()  # keep-alive for the next bin
            else:
                response.close()  # a half-read answer must not be reused

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """As python-tuf's, but in memory (no temp file per bin), naming the URL if too large."""
        received = bytearray()
        for chunk in self.fetch(url):
            received += chunk
            if len(received) > max_length:
                raise tuf_errors.DownloadLengthMismatchError(
                    f"{url}: larger than the {max_length}-byte limit"
                )
        return bytes(received)


class _Transient(Retryable):
    """A failed attempt worth repeating; `final` is what is raised once retries are spent."""

    def __init__(self, final: tuf_errors.DownloadError, retry_after: float | None = None) -> None:
        super().__init__(str(final), retry_after)
        self.final = final


def _reason(exc: BaseException) -> str:
    """The innermost words of a urllib3 error ("Connection refused"), not its reprs."""
    inner = exc
    for _ in range(5):  # urllib3 errors wrap socket errors
        cause = getattr(inner, "reason", None)
        if not isinstance(cause, BaseException):
            cause = next((a for a in reversed(inner.args) if isinstance(a, BaseException)), None)
        if cause is None:
            break
        inner = cause
    text = str(inner)
    if "] " in text:  # "...: [Errno 111] Connection refused"
        text = text.rpartition("] ")[2]
    return _one_line(text or type(inner).__name__)


@dataclass(frozen=True)
class TrustedMetadata:
    """The top-level metadata after verification."""

    root: Root
    snapshot: Snapshot
    targets: Targets
    targets_bytes: bytes  # as verified, sent to the workers


class MetadataReader:
    """Fetches and verifies RSTUF's metadata; one fetcher (HTTP session) per thread."""

    def __init__(self, config: AuditConfig, environment: HttpEnvironment | None = None) -> None:
        self.config = config
        self.environment = environment if environment is not None else read_environment()
        self.base_url = config.metadata_url.rstrip("/") + "/"
        self._local = threading.local()
        self._fetchers: list[MetadataFetcher] = []
        self._lock = threading.Lock()

    def __enter__(self) -> MetadataReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            for fetcher in self._fetchers:
                fetcher.close()
            self._fetchers.clear()

    @property
    def fetcher(self) -> MetadataFetcher:
        fetcher = getattr(self._local, "fetcher", None)
        if fetcher is None:
            fetcher = self._local.fetcher = MetadataFetcher(
                self.config, environment=self.environment
            )
            with self._lock:
                self._fetchers.append(fetcher)
        return fetcher

    def trusted_root(self) -> bytes:
        path = self.config.trusted_root
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TrustedRootUnusable(path, exc.strerror or str(exc)) from None

    def top_level(self) -> TrustedMetadata:
        """Root rotation, timestamp, snapshot and targets, verified by python-tuf's Updater.

        The Updater works in a temporary directory that is deleted afterwards:
        every audit starts again from the trusted root. What it verified is
        read back from the files it persisted after each verification.
        """
        root_bytes = self.trusted_root()
        updater_config = UpdaterConfig(
            root_max_length=self.config.max_root_bytes,
            timestamp_max_length=self.config.max_timestamp_bytes,
            snapshot_max_length=self.config.max_snapshot_bytes,
            targets_max_length=self.config.max_targets_bytes,
        )
        with tempfile.TemporaryDirectory(prefix="tuf-audit-") as directory:
            try:
                updater = Updater(
                    metadata_dir=directory,
                    metadata_base_url=self.base_url,
                    fetcher=self.fetcher,
                    config=updater_config,
                    bootstrap=root_bytes,
                )
            except (tuf_errors.RepositoryError, ValueError, KeyError, TypeError) as exc:
                reason = f"not usable TUF root metadata ({_one_line(str(exc))})"
                raise TrustedRootUnusable(self.config.trusted_root, reason) from None
            try:
                updater.refresh()
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
                raise rejection(exc) from None
            return self._read_verified(Path(directory))

    @staticmethod
    def _read_verified(directory: Path) -> TrustedMetadata:
        targets_bytes = (directory / f"{Targets.type}.json").read_bytes()
        return TrustedMetadata(
            root=Metadata[Root].from_file(str(directory / f"{Root.type}.json")).signed,
            snapshot=Metadata[Snapshot].from_file(str(directory / f"{Snapshot.type}.json")).signed,
            targets=Metadata[Targets].from_bytes(targets_bytes).signed,
            targets_bytes=targets_bytes,
        )

    def bin_url(self, role: str, meta: MetaFile, consistent: bool) -> str:
        """``<version>.<role>.json`` with consistent snapshots, as python-tuf's client asks."""
        name = parse.quote(role, "")
        return (
            f"{self.base_url}{meta.version}.{name}.json"
            if consistent
            else f"{self.base_url}{name}.json"
        )

    def fetch(self, role: str, meta: MetaFile, consistent: bool) -> bytes:
        """One bin's bytes (verified later, in a worker); raises MetadataUnreachable."""
        url = self.bin_url(role, meta, consistent)
        limit = min(meta.length, self.config.max_targets_bytes) if meta.length else None
        try:
            return self.fetcher.download_bytes(url, limit or self.config.max_targets_bytes)
        except tuf_errors.DownloadError as exc:
            raise rejection(exc) from None


# --- the audit -----------------------------------------------------------------------------------


def succinct_roles_of(targets: Targets) -> SuccinctRoles | None:
    """The succinct hash-bin delegation of the top-level targets (None: no delegation).

    Raises MetadataRejected for delegations to named roles, which this audit
    does not walk.
    """
    delegations = targets.delegations
    if delegations is None:
        return None
    if delegations.succinct_roles is None:
        names = ", ".join(sorted(delegations.roles or {})[:3])
        raise MetadataRejected(
            "unsupported delegation",
            f"targets delegates to named roles ({names}); this audit reads succinct hash "
            "bins (TAP 15), as RSTUF publishes them",
        )
    return delegations.succinct_roles


class PagesByBin:
    """The page paths on disk, grouped by the bin a client looks each up in.

    Each bin's paths are packed into one buffer of NUL-separated file-system
    bytes (a NUL cannot occur in a path): at 700,000 pages that is ~25 MB,
    where a list of str per bin would be ~65 MB. Without bins, one group.
    """

    def __init__(self, succinct: SuccinctRoles | None, roles: list[str]) -> None:
        self.succinct = succinct
        self._position = {role: position for position, role in enumerate(roles)}
        self._packed = [bytearray() for _ in roles] if succinct else [bytearray()]
        self.count = 0

    def position(self, path: str) -> int:
        if self.succinct is None:
            return 0
        return self._position[self.succinct.get_role_for_target(path)]

    def add_all(self, paths: Iterable[str]) -> PagesByBin:
        for path in paths:
            self._packed[self.position(path)] += os.fsencode(path) + b"\0"
            self.count += 1
        return self

    def take(self, position: int) -> bytes:
        """The packed paths of one bin, released here (each bin is handed on once)."""
        packed, self._packed[position] = bytes(self._packed[position]), bytearray()
        return packed


def unpack_paths(packed: bytes) -> list[str]:
    """The paths `PagesByBin.take` packed."""
    return [os.fsdecode(path) for path in packed.split(b"\0")[:-1]]


def group_work(work: Iterable[BinWork]) -> Iterator[tuple[BinWork, ...]]:
    """Bundle consecutive bins into tasks of about GROUP_ITEMS pages, in order."""
    group: list[BinWork] = []
    items = 0
    for item in work:
        group.append(item)
        items += item.pages.count(0) + len(item.top_level) + 1
        if items >= GROUP_ITEMS or len(group) >= GROUP_MAX_BINS:
            yield tuple(group)
            group, items = [], 0
    if group:
        yield tuple(group)


def audit(
    config: AuditConfig,
    layout: MirrorLayout,
    emit: Callable[[Difference], None],
    environment: HttpEnvironment | None = None,
    listing: Iterable[tuple[str, int, str, dict[str, int]]] | None = None,
) -> AuditReport:
    """Compare the served tree with every target RSTUF's metadata signs.

    Calls `emit` with each difference, in bin order and by path within a bin,
    as they are found (so memory does not grow with them). Raises AuditError
    when the audit cannot run (metadata unreachable or failing verification;
    `listing`: the served tree is a bucket's, as ``storage.audit_listing``
    yields it, and no page is read here;
    differences of the bins before it were emitted, none of the bin that
    failed), or OSError when a page cannot be read. `environment`: the run's HTTP
    environment (the process environment's by default).
    """
    started = time.monotonic()
    report = AuditReport()
    with MetadataReader(config, environment) as reader:
        trusted = reader.top_level()
        reference_time = config.now()
        succinct = succinct_roles_of(trusted.targets)
        roles = list(succinct.get_roles()) if succinct else []
        metas = [_bin_meta(trusted.snapshot, role) for role in roles]
        top_level = signed_targets(trusted.targets)
        listed: dict[str, Listed] | None = None
        if listing is not None:
            listed = {
                path: Listed(size, digest, None if copies == {digest: size} else copies)
                for path, size, digest, copies in listing
            }
        paths = iter_targets(layout, ordered=False) if listed is None else iter(listed)
        pages = PagesByBin(succinct, roles).add_all(paths)
        report.pages, report.bins = pages.count, len(roles)
        log.info(
            "auditing %d pages against %d bins at %s", report.pages, len(roles), reader.base_url
        )
        fetch_pool = ThreadPoolExecutor(config.fetch_workers, thread_name_prefix="tuf-fetch")
        hash_pool = make_executor(config.executor, config.hash_workers)
        try:
            if succinct is None:
                work: Iterable[BinWork] = [
                    BinWork(Targets.type, None, None, pages.take(0), top_level)
                ]
            else:
                fetched = ordered_map(
                    fetch_pool,
                    reader.fetch,
                    (
                        (role, meta, trusted.root.consistent_snapshot)
                        for role, meta in zip(roles, metas, strict=True)
                    ),
                    config.fetch_workers * 4,
                )
                work = _bin_work(fetched, pages, top_level)
            served = os.fspath(layout.served_dir)
            tasks = (
                (
                    served if listed is None else _listed_of(listed, group),
                    trusted.targets_bytes,
                    reference_time,
                    group,
                )
                for group in group_work(work)
            )
            for _, found in ordered_map(hash_pool, audit_group, tasks, config.hash_workers * 4):
                report.targets += found.targets
                for path in found.misplaced[: max(0, 3 - report.misplaced)]:  # the first few
                    log.warning("target %s is listed in a bin a client never reads for it", path)
                report.misplaced += len(found.misplaced)
                for difference in found.differences:
                    report.counts[difference.kind] += 1
                    emit(difference)
        finally:
            hash_pool.shutdown(wait=True, cancel_futures=True)
            fetch_pool.shutdown(wait=True, cancel_futures=True)
    if report.misplaced:
        log.warning("%d targets are listed in bins that do not hold their path", report.misplaced)
    report.elapsed = time.monotonic() - started
    return report


def _listed_of(listed: dict[str, Listed], group: tuple[BinWork, ...]) -> dict[str, Listed]:
    """The listed pages of a group's bins: what its worker compares (sent, not shared)."""
    return {path: listed[path] for work in group for path in unpack_paths(work.pages)}


def _bin_work(
    fetched: Iterable[tuple[tuple[str, MetaFile, bool], bytes]],
    pages: PagesByBin,
    top_level: dict[str, SignedTarget],
) -> Iterator[BinWork]:
    """Pair each fetched bin with its pages on disk and the top-level targets in its range."""
    top_by_bin: dict[int, dict[str, SignedTarget]] = {}
    for path, target in top_level.items():  # RSTUF signs none at the top: usually empty
        top_by_bin.setdefault(pages.position(path), {})[path] = target
    for position, ((role, meta, _), data) in enumerate(fetched):
        yield BinWork(role, meta, data, pages.take(position), top_by_bin.get(position, {}))


def _bin_meta(snapshot: Snapshot, role: str) -> MetaFile:
    meta = snapshot.meta.get(f"{role}.json")
    if meta is None:
        raise MetadataRejected("invalid", f"snapshot has no entry for {role}")
    return meta


def signed_target(
    config: AuditConfig, path: str, environment: HttpEnvironment | None = None
) -> SignedTarget | None:
    """What the metadata signs for one path (None: not a target), verified as `audit` does.

    Reads the top-level metadata and the one bin that holds `path`. Raises AuditError.
    """
    with MetadataReader(config, environment) as reader:
        trusted = reader.top_level()
        found = signed_targets(trusted.targets).get(path)
        if found is not None:
            return found
        succinct = succinct_roles_of(trusted.targets)
        if succinct is None:
            return None
        role = succinct.get_role_for_target(path)
        meta = _bin_meta(trusted.snapshot, role)
        data = reader.fetch(role, meta, trusted.root.consistent_snapshot)
        verified = verify_bin(data, role, meta, trusted.targets, config.now())
        return signed_targets(verified).get(path)
